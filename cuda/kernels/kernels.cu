// The cuda package's kernels: every op of compute.Backend, in CUDA C, compiled to PTX for sm_80 and
// sm_90 by `make ptx` (cuda/ptx/kernels_sm80.ptx, kernels_sm90.ptx, embedded in the binary and
// JIT-compiled by the driver with cuModuleLoadData). Only the driver is needed at run time.
//
// Conventions (the Go side, cuda/backend.go, launches them):
//   - Activations are float32; weights float32 or bfloat16 (raw uint16 bits, widened exactly by a
//     shift); accumulation is float32, or float64 where the CPU backend uses float64 (the RMSNorm
//     mean of squares, softmax's exp and sum, SiLU and GELU), so both backends agree closely.
//   - Products and sums that the CPU backend rounds separately use __fmul_rn/__fadd_rn, which the
//     compiler never contracts into an FMA.
//   - Every kernel is extern "C" (unmangled names for cuModuleGetFunction) and takes only pointers,
//     int and float parameters.
//   - Sizes are int (the Go side checks that every tensor has fewer than 2^31 elements); addresses
//     are computed in size_t.

#include <stdint.h>

#define FULL_MASK 0xffffffffu

// bf16 is a bfloat16's bits; widening is exact.
__device__ __forceinline__ float bf16(unsigned short b) { return __uint_as_float(((unsigned)b) << 16); }

struct Sum {
	template <class T>
	__device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

struct Max {
	__device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// warp_reduce combines v over the 32 lanes of the warp; every lane gets the result.
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
	return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, Sum()); }

// ---------------------------------------------------------------------------------------------
// Linear, decode shapes (m <= 8): dst[m×n] (+)= x[m×k] · wᵀ, w [n×k] row-major.
//
// Memory-bound: every weight byte is read once, so the kernel streams w with 128-bit loads that
// bypass L1 (__ldcs: evict-first), widens bf16 in registers and accumulates in float32. A block is
// blockDim.y groups of blockDim.x threads (32..256, a multiple of 32; the host picks the group size
// so that short matrices still fill the GPU); a group owns R consecutive output rows and splits k
// across its threads, then reduces with warp shuffles and, across warps, shared memory. Each thread
// loads a chunk of x (8 values of each of the m rows, from L1/L2) once for its R rows: with m > 1
// the x reads would otherwise outnumber the weight bytes. R grows with m (gemv_rows below; the
// kernels' names carry it, so the host cannot launch one with another R in mind).
// The vector kernels need 16-byte-aligned w and x and k a multiple of 8; gemv_scalar takes the rest.

#define GEMV_THREADS 256
#define GEMV_MAX_M 8
#define GEMV_MAX_ACC 32 // M·R

// group_reduce sums acc[0..N) over the blockDim.x threads of this row group; thread x == 0 gets
// the sums. Every thread of the block must call it.
template <int N>
__device__ __forceinline__ void group_reduce(float (&acc)[N]) {
	__shared__ float part[GEMV_THREADS / 32][GEMV_MAX_ACC];
#pragma unroll
	for (int i = 0; i < N; i++) acc[i] = warp_sum(acc[i]);
	if (blockDim.x == 32) return;
	int warps = blockDim.x / 32;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int slot = threadIdx.y * warps + warp;
	if (lane == 0) {
#pragma unroll
		for (int i = 0; i < N; i++) part[slot][i] = acc[i];
	}
	__syncthreads();
	if (threadIdx.x == 0) {
#pragma unroll
		for (int i = 0; i < N; i++) {
			float s = 0.f;
			for (int w = 0; w < warps; w++) s += part[threadIdx.y * warps + w][i];
			acc[i] = s;
		}
	}
}

// load8 reads chunk c of a weight row as 8 floats: 16 bytes of bfloat16, or 32 bytes of float.
template <bool BF16>
__device__ __forceinline__ void load8(float (&wf)[8], const void *row, int c) {
	if (BF16) {
		uint4 v = __ldcs(reinterpret_cast<const uint4 *>(row) + c);
		wf[0] = __uint_as_float(v.x << 16);
		wf[1] = __uint_as_float(v.x & 0xffff0000u);
		wf[2] = __uint_as_float(v.y << 16);
		wf[3] = __uint_as_float(v.y & 0xffff0000u);
		wf[4] = __uint_as_float(v.z << 16);
		wf[5] = __uint_as_float(v.z & 0xffff0000u);
		wf[6] = __uint_as_float(v.w << 16);
		wf[7] = __uint_as_float(v.w & 0xffff0000u);
	} else {
		const float4 *p = reinterpret_cast<const float4 *>(row) + 2 * c;
		float4 a = __ldcs(p), b = __ldcs(p + 1);
		wf[0] = a.x, wf[1] = a.y, wf[2] = a.z, wf[3] = a.w;
		wf[4] = b.x, wf[5] = b.y, wf[6] = b.z, wf[7] = b.w;
	}
}

// gemv_body: the group of this thread owns rows row0 .. row0+R-1; chunk c is elements 8c .. 8c+7.
template <int M, int R, bool BF16>
__device__ __forceinline__ void gemv_body(float *dst, const float *x, const void *w, int k, int n, int accumulate) {
	int row0 = (blockIdx.x * blockDim.y + threadIdx.y) * R;
	float acc[M * R];
#pragma unroll
	for (int i = 0; i < M * R; i++) acc[i] = 0.f;
	size_t esize = BF16 ? 2 : 4;
	const char *rows[R];
	bool live[R];
#pragma unroll
	for (int r = 0; r < R; r++) {
		live[r] = row0 + r < n;
		// A row past the end reads row n-1 again (in bounds) and is not stored.
		rows[r] = (const char *)w + (size_t)min(row0 + r, n - 1) * k * esize;
	}
	int chunks = k / 8;
	// Two chunks in flight per row for one row per group; R rows give R loads in flight already.
#pragma unroll(R == 1 ? 2 : 1)
	for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
		float wf[R][8];
#pragma unroll
		for (int r = 0; r < R; r++) load8<BF16>(wf[r], rows[r], c);
#pragma unroll
		for (int i = 0; i < M; i++) {
			const float4 *xp = reinterpret_cast<const float4 *>(x + (size_t)i * k) + 2 * c;
			float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
			for (int r = 0; r < R; r++)
				acc[i * R + r] += wf[r][0] * a.x + wf[r][1] * a.y + wf[r][2] * a.z + wf[r][3] * a.w +
				                  wf[r][4] * b.x + wf[r][5] * b.y + wf[r][6] * b.z + wf[r][7] * b.w;
		}
	}
	group_reduce<M * R>(acc);
	if (threadIdx.x != 0) return;
#pragma unroll
	for (int r = 0; r < R; r++) {
		if (!live[r]) continue;
#pragma unroll
		for (int i = 0; i < M; i++) {
			float *d = dst + (size_t)i * n + row0 + r;
			*d = accumulate ? *d + acc[i * R + r] : acc[i * R + r];
		}
	}
}

// The decode kernels: gemv_{bf16,f32}_m<M>r<R>, R = 1 for m = 1, 2 for m = 2..3, 4 for m >= 4.
#define GEMV_KERNELS(M, R) \
	extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_bf16_m##M##r##R(float *dst, const float *x, const unsigned short *w, int k, int n, int accumulate) { \
		gemv_body<M, R, true>(dst, x, w, k, n, accumulate); \
	} \
	extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_f32_m##M##r##R(float *dst, const float *x, const float *w, int k, int n, int accumulate) { \
		gemv_body<M, R, false>(dst, x, w, k, n, accumulate); \
	}

GEMV_KERNELS(1, 1)
GEMV_KERNELS(2, 2)
GEMV_KERNELS(3, 2)
GEMV_KERNELS(4, 4)
GEMV_KERNELS(5, 4)
GEMV_KERNELS(6, 4)
GEMV_KERNELS(7, 4)
GEMV_KERNELS(8, 4)

// gemv_scalar is the decode Linear for any alignment and k: one element per load. bf16 != 0 reads
// w as bfloat16.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_scalar(float *dst, const float *x, const void *w, int bf16w, int m, int k, int n, int accumulate) {
	int row = blockIdx.x * blockDim.y + threadIdx.y;
	float acc[GEMV_MAX_M];
#pragma unroll
	for (int i = 0; i < GEMV_MAX_M; i++) acc[i] = 0.f;
	if (row < n) {
		const float *wf = (const float *)w + (size_t)row * k;
		const unsigned short *wb = (const unsigned short *)w + (size_t)row * k;
		for (int c = threadIdx.x; c < k; c += blockDim.x) {
			float wv = bf16w ? bf16(wb[c]) : wf[c];
#pragma unroll
			for (int i = 0; i < GEMV_MAX_M; i++)
				if (i < m) acc[i] += wv * x[(size_t)i * k + c];
		}
	}
	group_reduce<GEMV_MAX_M>(acc);
	if (threadIdx.x != 0 || row >= n) return;
	for (int i = 0; i < m; i++) {
		float *d = dst + (size_t)i * n + row;
		*d = accumulate ? *d + acc[i] : acc[i];
	}
}

// ---------------------------------------------------------------------------------------------
// Linear, prefill shapes (m > 8): a tiled GEMM, C[m×n] (+)= A[m×k] · Bᵀ, B [n×k]. 64×64 output
// tiles, k in steps of 16 through shared memory (stored k-major so the inner loop reads rows of
// the tile), 256 threads with a 4×4 micro-tile each; bf16 B is widened as it is staged.

#define TM 64
#define TN 64
#define TK 16

template <bool BF16>
__device__ __forceinline__ void gemm_body(float *C, const float *A, const void *B, int m, int k, int n, int accumulate) {
	__shared__ float As[TK][TM + 4];
	__shared__ float Bs[TK][TN + 4];
	int t = threadIdx.x;
	int bm = blockIdx.y * TM, bn = blockIdx.x * TN;
	int lr = t / 4, lk = (t % 4) * 4; // staging: row lr of the tile, k lk..lk+3
	int ty = t / 16, tx = t % 16;     // compute: rows ty*4.., cols tx*4..
	float acc[4][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
	const float *Bf = (const float *)B;
	const unsigned short *Bb = (const unsigned short *)B;
	for (int k0 = 0; k0 < k; k0 += TK) {
		int ar = bm + lr, br = bn + lr;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			int kk = k0 + lk + i;
			As[lk + i][lr] = (ar < m && kk < k) ? A[(size_t)ar * k + kk] : 0.f;
			float bv = 0.f;
			if (br < n && kk < k) bv = BF16 ? bf16(Bb[(size_t)br * k + kk]) : Bf[(size_t)br * k + kk];
			Bs[lk + i][lr] = bv;
		}
		__syncthreads();
#pragma unroll
		for (int kk = 0; kk < TK; kk++) {
			float a[4], b[4];
#pragma unroll
			for (int i = 0; i < 4; i++) a[i] = As[kk][ty * 4 + i];
#pragma unroll
			for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
			for (int i = 0; i < 4; i++)
#pragma unroll
				for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
		}
		__syncthreads();
	}
#pragma unroll
	for (int i = 0; i < 4; i++) {
		int r = bm + ty * 4 + i;
		if (r >= m) continue;
#pragma unroll
		for (int j = 0; j < 4; j++) {
			int c = bn + tx * 4 + j;
			if (c >= n) continue;
			float *d = C + (size_t)r * n + c;
			*d = accumulate ? *d + acc[i][j] : acc[i][j];
		}
	}
}

extern "C" __global__ void __launch_bounds__(256) gemm_f32(float *C, const float *A, const float *B, int m, int k, int n, int accumulate) {
	gemm_body<false>(C, A, B, m, k, n, accumulate);
}

extern "C" __global__ void __launch_bounds__(256) gemm_bf16(float *C, const float *A, const unsigned short *B, int m, int k, int n, int accumulate) {
	gemm_body<true>(C, A, B, m, k, n, accumulate);
}

// ---------------------------------------------------------------------------------------------
// Row reductions: one block of 256 threads per row.

#define ROW_THREADS 256

// block_reduce combines v over the block's threads (a multiple of 32, at most ROW_THREADS); every
// thread gets the result. Each instantiation has its own shared memory, so a kernel may use two.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op) {
	__shared__ T part[ROW_THREADS / 32];
	__shared__ T total;
	v = warp_reduce(v, op);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0) part[warp] = v;
	__syncthreads();
	if (threadIdx.x == 0) {
		T t = part[0];
		for (int w = 1; w < (int)blockDim.x / 32; w++) t = op(t, part[w]);
		total = t;
	}
	__syncthreads();
	return total;
}

// rmsnorm: dst[r] = w ⊙ (x[r] · 1/√(mean(x[r]²) + eps)); the mean of squares in float64, rounded
// to float32, plus eps in float32, the reciprocal square root in float64 rounded to float32. dst
// may be x.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) rmsnorm(float *dst, const float *x, const float *w, int d, float eps) {
	const float *xr = x + (size_t)blockIdx.x * d;
	float *dr = dst + (size_t)blockIdx.x * d;
	double s = 0;
	for (int i = threadIdx.x; i < d; i += blockDim.x) {
		double v = xr[i];
		s += v * v;
	}
	s = block_reduce(s, Sum());
	float mean = (float)(s / d);
	float inv = (float)(1.0 / sqrt((double)__fadd_rn(mean, eps)));
	for (int i = threadIdx.x; i < d; i += blockDim.x) dr[i] = __fmul_rn(w[i], __fmul_rn(xr[i], inv));
}

// softmax of each row of n elements in place: max subtracted, exp in float64 rounded to float32,
// the sum in float64. A row of all -Inf gives NaN, as in torch.
extern "C" __global__ void __launch_bounds__(ROW_THREADS) softmax_rows(float *x, int n) {
	float *xr = x + (size_t)blockIdx.x * n;
	float mx = -INFINITY;
	for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, xr[i]);
	mx = block_reduce(mx, Max());
	double s = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		float e = (float)exp((double)__fsub_rn(xr[i], mx));
		xr[i] = e;
		s += e;
	}
	s = block_reduce(s, Sum());
	double inv = 1.0 / s;
	for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] = (float)((double)xr[i] * inv);
}

// ---------------------------------------------------------------------------------------------
// Elementwise, over n elements with a grid-stride loop.

#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)

extern "C" __global__ void relu(float *x, int n) {
	GRID_STRIDE(i, n) {
		float v = x[i];
		if (v < 0.f) x[i] = 0.f;
	}
}

// gelu_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in float64, rounded.
extern "C" __global__ void gelu_tanh(float *x, int n) {
	GRID_STRIDE(i, n) {
		double v = x[i];
		x[i] = (float)(0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
	}
}

// silu: x·sigmoid(x) = x / (1 + e^-x) in float64, rounded.
extern "C" __global__ void silu(float *x, int n) {
	GRID_STRIDE(i, n) {
		double v = x[i];
		x[i] = (float)(v / (1.0 + exp(-v)));
	}
}

extern "C" __global__ void mul(float *dst, const float *a, const float *b, int n) {
	GRID_STRIDE(i, n) dst[i] = __fmul_rn(a[i], b[i]);
}

extern "C" __global__ void add(float *dst, const float *a, int n) {
	GRID_STRIDE(i, n) dst[i] = __fadd_rn(dst[i], a[i]);
}

extern "C" __global__ void scale(float *x, float s, int n) {
	GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], s);
}

// rope rotates x [tokens × heads·hd] in place, HF's rotate_half: element i pairs with i + hd/2,
// by the angles of cos, sin [tokens × hd/2]. One thread per pair.
extern "C" __global__ void rope(float *x, const float *cos, const float *sin, int tokens, int heads, int hd) {
	int half = hd / 2;
	int pairs = tokens * heads * half;
	GRID_STRIDE(p, pairs) {
		int i = p % half;
		int th = p / half; // token·heads + head
		int t = th / heads;
		float *v = x + (size_t)th * hd;
		float c = cos[(size_t)t * half + i], s = sin[(size_t)t * half + i];
		float x1 = v[i], x2 = v[i + half];
		v[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
		v[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
	}
}

// ---------------------------------------------------------------------------------------------
// Row movement with host-given indices (copied to the device before the launch).

// embed: row i of dst [count × d] = row ids[i] of table [vocab × d], float32 or bfloat16.
// Grid: (ceil(d/256), min(count, 65535)); rows beyond the grid's y are taken in strides.
extern "C" __global__ void embed(float *dst, const void *table, int bf16t, const int *ids, int count, int d) {
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= d) return;
	for (int r = blockIdx.y; r < count; r += gridDim.y) {
		size_t src = (size_t)ids[r] * d + c;
		dst[(size_t)r * d + c] = bf16t ? bf16(((const unsigned short *)table)[src]) : ((const float *)table)[src];
	}
}

// gather_rows: row i of dst = row rows[i] of src (d elements). Grid as embed's.
extern "C" __global__ void gather_rows(float *dst, const float *src, const int *rows, int count, int d) {
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= d) return;
	for (int r = blockIdx.y; r < count; r += gridDim.y) dst[(size_t)r * d + c] = src[(size_t)rows[r] * d + c];
}

// scatter_add_rows: row rows[i] of dst += weights[i]·(row i of src), for i in order, the product
// rounded before the sum. Rows may repeat, so one thread owns a column and walks i in order: the
// result is the sequential one, bit for bit.
extern "C" __global__ void scatter_add_rows(float *dst, const float *src, const int *rows, const float *weights, int count, int d) {
	int c = blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= d) return;
	for (int i = 0; i < count; i++) {
		float *p = dst + (size_t)rows[i] * d + c;
		*p = __fadd_rn(*p, __fmul_rn(weights[i], src[(size_t)i * d + c]));
	}
}

// ---------------------------------------------------------------------------------------------
// Attention of one sequence over its KV cache: out [nq × heads·hd] from q [nq × heads·hd] and
// k, v [nk × kvHeads·hd]. One block per (query, head); its warps split the keys, each lane holds
// hd/32 elements of the query, of the running output and of each key and value row. Each warp runs
// an online softmax (running max, float64 running sum, rescaled output) and the block merges the
// warps' partial results. Query head h reads KV head h / (heads/kvHeads) (GQA).
//
// Score of key j (position j) for the query at position qp = past + i: dot(q, k_j)·scale, plus the
// T5 bias bias[(clamp(j − qp, −reach, reach) + reach)·heads + h] when bias is set, plus mask[j] when
// mask is set. With causal, keys j ≤ qp only, and with window > 0 only j > qp − window.

#define ATT_WARPS 8
#define ATT_MAX_HD 256
#define ATT_PER_LANE (ATT_MAX_HD / 32)

extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) attention(float *out, const float *q, const float *k, const float *v,
	const float *bias, const float *mask, int nq, int nk, int heads, int kvHeads, int hd, float scale,
	int causal, int past, int window, int reach) {
	__shared__ float sm_m[ATT_WARPS];
	__shared__ double sm_l[ATT_WARPS];
	__shared__ float sm_o[ATT_WARPS][ATT_MAX_HD];

	int i = blockIdx.x, h = blockIdx.y;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int kh = h / (heads / kvHeads);
	int qp = past + i;
	int first = 0, keys = nk;
	if (causal) {
		keys = min(nk, qp + 1);
		if (window > 0) first = max(0, qp - window + 1);
	}
	size_t qd = (size_t)heads * hd, kd = (size_t)kvHeads * hd;
	const float *qi = q + i * qd + (size_t)h * hd;

	float qr[ATT_PER_LANE], o[ATT_PER_LANE];
#pragma unroll
	for (int t = 0; t < ATT_PER_LANE; t++) {
		int e = lane + 32 * t;
		qr[t] = e < hd ? qi[e] : 0.f;
		o[t] = 0.f;
	}
	float m = -INFINITY;
	double l = 0;
	for (int j = first + warp; j < keys; j += ATT_WARPS) {
		const float *kj = k + j * kd + (size_t)kh * hd;
		float part = 0.f;
#pragma unroll
		for (int t = 0; t < ATT_PER_LANE; t++) {
			int e = lane + 32 * t;
			if (e < hd) part += qr[t] * kj[e];
		}
		float s = __fmul_rn(warp_sum(part), scale);
		float add = 0.f;
		if (bias != NULL) add = bias[(size_t)(min(max(j - qp, -reach), reach) + reach) * heads + h];
		if (mask != NULL) add = __fadd_rn(add, mask[j]);
		s = __fadd_rn(s, add);
		if (s > m) {
			float corr = (float)exp((double)__fsub_rn(m, s)); // 0 for the first key (m = -Inf)
			l *= corr;
#pragma unroll
			for (int t = 0; t < ATT_PER_LANE; t++) o[t] *= corr;
			m = s;
		}
		float p = (float)exp((double)__fsub_rn(s, m));
		l += p;
		const float *vj = v + j * kd + (size_t)kh * hd;
#pragma unroll
		for (int t = 0; t < ATT_PER_LANE; t++) {
			int e = lane + 32 * t;
			if (e < hd) o[t] = __fadd_rn(o[t], __fmul_rn(p, vj[e]));
		}
	}
	if (lane == 0) {
		sm_m[warp] = m;
		sm_l[warp] = l;
	}
#pragma unroll
	for (int t = 0; t < ATT_PER_LANE; t++) {
		int e = lane + 32 * t;
		if (e < hd) sm_o[warp][e] = o[t];
	}
	__syncthreads();
	float M = -INFINITY;
	for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w]);
	double L = 0;
	float f[ATT_WARPS];
	for (int w = 0; w < ATT_WARPS; w++) {
		// A warp that saw no key has m = -Inf and l = 0: its factor is 0 (and so is every factor
		// when no warp saw a key; the output is then 0, as the CPU backend's empty sum).
		f[w] = sm_m[w] == -INFINITY ? 0.f : (float)exp((double)__fsub_rn(sm_m[w], M));
		L += sm_l[w] * f[w];
	}
	float inv = L > 0 ? (float)(1.0 / L) : 0.f;
	float *oi = out + i * qd + (size_t)h * hd;
	for (int e = threadIdx.x; e < hd; e += blockDim.x) {
		float s = 0.f;
		for (int w = 0; w < ATT_WARPS; w++) s += sm_o[w][e] * f[w];
		oi[e] = s * inv;
	}
}
