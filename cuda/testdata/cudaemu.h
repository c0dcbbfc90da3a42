// cudaemu.h runs CUDA C kernels on the CPU, for the fake driver (fakecuda.cc): each CUDA thread of
// a block is a fiber (its own stack, switched with _setjmp/_longjmp on one host thread), blocks run
// one after another, so __shared__ variables can be statics; __syncthreads waits until every thread
// of the block has reached it, and a warp shuffle is a store, a wait for the warp's 32 threads, a
// load and a wait. Only what cuda/kernels uses is here. It checks the kernels' logic (indexing,
// reductions, launch shapes) on small shapes; rounding on a GPU may differ in the last bit where
// the GPU contracts a*b+c into an FMA.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <algorithm>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)

struct uint3 {
	unsigned x, y, z;
};
typedef uint3 dim3;
struct uint4 {
	unsigned x, y, z, w;
};
struct float4 {
	float x, y, z, w;
};

namespace cudaemu {
extern dim3 gridDim, blockDim, blockIdx, threadIdx;
extern double lanes[1024];
extern int current; // the running fiber: the linear thread index

enum wait { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
// yield suspends the running fiber until the scheduler releases what it waits for.
void yield(wait w);
} // namespace cudaemu

using cudaemu::blockDim;
using cudaemu::blockIdx;
using cudaemu::gridDim;
using cudaemu::threadIdx;
using std::max;
using std::min;

inline void __syncthreads() { cudaemu::yield(cudaemu::WAIT_BLOCK); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
	int t = cudaemu::current;
	cudaemu::lanes[t] = v;
	cudaemu::yield(cudaemu::WAIT_WARP);
	T r = (T)cudaemu::lanes[t ^ mask];
	cudaemu::yield(cudaemu::WAIT_WARP);
	return r;
}

inline float __uint_as_float(unsigned u) {
	float f;
	std::memcpy(&f, &u, 4);
	return f;
}

template <class T>
inline T __ldg(const T *p) { return *p; }
template <class T>
inline T __ldcs(const T *p) { return *p; }

// Separate roundings: fakecuda.cc is compiled with -ffp-contract=off.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
