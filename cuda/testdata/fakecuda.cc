// A fake CUDA driver (libcuda.so.1) for testing the cuda package on a machine without a GPU:
// TestFakeDriver builds it and runs the device tests, the conformance suite included, against it.
//
// "Device memory" is host memory (a CUdeviceptr is the address of a malloc'd block), copies are
// memcpy, streams run everything at once, and a kernel launch runs the kernel of
// ../kernels/kernels.cu on the CPU (cudaemu.h: a host thread per CUDA thread), with the launch's
// grid, block and parameters. It checks what a real driver would refuse: a call without the primary
// context current, unknown handles, launch shapes out of range, frees of pointers it did not
// allocate, copies outside an allocation, events waited on before they are recorded.
//
// Built with the cuda.h of the toolchain, so every function has the real prototype and the
// ABI-versioned name the header maps it to (cuMemAlloc is defined as cuMemAlloc_v2):
//
//	c++ -std=c++20 -O1 -U_FORTIFY_SOURCE -shared -fPIC -ffp-contract=off -Wno-unknown-pragmas -I<cuda include> -o libcuda.so.1 fakecuda.cc
//
// (-U_FORTIFY_SOURCE: its longjmp refuses to jump to another stack, which is what a fiber switch is.)
//
// (-Wno-unknown-pragmas: the kernels' #pragma unroll.)

#include <cuda.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <ucontext.h>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cudaemu.h"

// The kernels, compiled for the CPU; hidden, so only the driver API is exported.
#pragma GCC visibility push(hidden)
#include "../kernels/kernels.cu"

namespace cudaemu {
dim3 gridDim, blockDim, blockIdx, threadIdx;
double lanes[1024];
int current;

// The fibers: one per CUDA thread of a block (up to 1024), each on its own stack, started once
// (makecontext) and afterwards switched with _setjmp/_longjmp, which make no system call.
struct fiber {
	jmp_buf ctx;
	wait state;
	std::vector<char> stack;
};
static fiber fibers[1024];
static int started; // fibers[0 .. started) exist
static jmp_buf scheduler;
static ucontext_t boot, boot_return;

using Launcher = std::function<void(void **)>;
static const Launcher *launch_f;
static void **launch_kp;

void yield(wait w) {
	fibers[current].state = w;
	if (!_setjmp(fibers[current].ctx)) _longjmp(scheduler, 1);
}

// fiber_main is a fiber's whole life: run the kernel once per block it is resumed for.
static void fiber_main(int t) {
	fibers[t].state = DONE;
	if (!_setjmp(fibers[t].ctx)) swapcontext(&boot, &boot_return); // started: back to start()
	for (;;) {
		(*launch_f)(launch_kp);
		yield(DONE);
	}
}

static void start(int t) {
	fibers[t].stack.resize(256 << 10);
	getcontext(&boot);
	boot.uc_stack.ss_sp = fibers[t].stack.data();
	boot.uc_stack.ss_size = fibers[t].stack.size();
	boot.uc_link = nullptr;
	makecontext(&boot, (void (*)())fiber_main, 1, t);
	swapcontext(&boot_return, &boot);
}

static void resume(int t) {
	current = t;
	threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
	if (!_setjmp(scheduler)) _longjmp(fibers[t].ctx, 1);
}

// run_block runs every thread of the block to its end, releasing the waits as they fill: a warp's
// when its 32 threads wait at a shuffle, the block's when every thread waits at __syncthreads.
static void run_block(int n) {
	for (int t = 0; t < n; t++) fibers[t].state = RUN;
	for (;;) {
		bool ran = false;
		for (int t = 0; t < n; t++)
			if (fibers[t].state == RUN) {
				ran = true;
				resume(t);
			}
		if (ran) continue;
		bool released = false;
		for (int w = 0; w * 32 < n; w++) {
			bool all = true;
			for (int l = w * 32; l < w * 32 + 32 && l < n; l++) all = all && fibers[l].state == WAIT_WARP;
			if (all)
				for (int l = w * 32; l < w * 32 + 32 && l < n; l++) fibers[l].state = RUN, released = true;
		}
		if (released) continue;
		int waiting = 0, done = 0;
		for (int t = 0; t < n; t++) waiting += fibers[t].state == WAIT_BLOCK, done += fibers[t].state == DONE;
		if (done == n) return;
		if (waiting + done < n || waiting == 0) {
			fprintf(stderr, "fakecuda: the threads of a block wait for each other at different points (a deadlock on a GPU)\n");
			abort();
		}
		for (int t = 0; t < n; t++)
			if (fibers[t].state == WAIT_BLOCK) fibers[t].state = RUN;
	}
}

// A kernel launcher reads each parameter from kernelParams as the kernel's own parameter type.

template <class... A, size_t... I>
void call(void (*f)(A...), void **kp, std::index_sequence<I...>) {
	f(*static_cast<A *>(kp[I])...);
}

template <class... A>
Launcher launcher(void (*f)(A...)) {
	return [f](void **kp) { call(f, kp, std::index_sequence_for<A...>{}); };
}

#define K(name) {#name, launcher(name)}
static const std::map<std::string, Launcher> kernels = {
	K(gemv_bf16_m1r1), K(gemv_f32_m1r1), K(gemv_bf16_m2r2), K(gemv_f32_m2r2), K(gemv_bf16_m3r2), K(gemv_f32_m3r2),
	K(gemv_bf16_m4r4), K(gemv_f32_m4r4), K(gemv_bf16_m5r4), K(gemv_f32_m5r4), K(gemv_bf16_m6r4), K(gemv_f32_m6r4),
	K(gemv_bf16_m7r4), K(gemv_f32_m7r4), K(gemv_bf16_m8r4), K(gemv_f32_m8r4),
	K(gemv_scalar), K(gemm_f32), K(gemm_bf16), K(rmsnorm), K(softmax_rows), K(relu), K(gelu_tanh), K(silu),
	K(mul), K(add), K(scale), K(rope), K(embed), K(gather_rows), K(scatter_add_rows), K(attention),
};
#undef K

// run executes a launch: the blocks in order.
static void run(const Launcher &f, dim3 grid, dim3 block, void **kp) {
	int n = block.x * block.y * block.z;
	while (started < n) start(started++);
	gridDim = grid;
	blockDim = block;
	launch_f = &f;
	launch_kp = kp;
	for (unsigned z = 0; z < grid.z; z++)
		for (unsigned y = 0; y < grid.y; y++)
			for (unsigned x = 0; x < grid.x; x++) {
				blockIdx = {x, y, z};
				run_block(n);
			}
}
} // namespace cudaemu
#pragma GCC visibility pop

// The trace: with FAKECUDA_TRACE set to a file, every call that enqueues work on a stream appends
// a line naming the stream (and the event, or the destination), in issue order. The fake runs
// everything at once, so the order of a real GPU's streams is checked on the order of issue: a
// test reads the trace to see that a copy was made to wait for an event recorded on the compute
// stream after the kernels that read the memory it overwrites.
static std::mutex trace_mu;

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...) {
	static FILE *f = [] {
		const char *path = getenv("FAKECUDA_TRACE");
		return path != NULL ? fopen(path, "a") : NULL;
	}();
	if (f == NULL) return;
	std::lock_guard<std::mutex> lock(trace_mu);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fflush(f);
}

#define MAX_ALLOCS 65536

static int initialised;
static int ctx_token;                 // the primary context is &ctx_token
static __thread CUcontext current;    // per thread, as in the driver
static void *allocs[MAX_ALLOCS];      // live device and pinned allocations
static const int stream_token = 0x57ea, event_token = 0xe7e0; // streams and events are malloc'd ints holding these

static CUresult need_ctx(void) {
	if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
	return current == (CUcontext)&ctx_token ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

static std::mutex allocs_mu; // the waiter goroutine's thread and the test's may both call in

static int track(void *p) {
	std::lock_guard<std::mutex> lock(allocs_mu);
	for (int i = 0; i < MAX_ALLOCS; i++)
		if (allocs[i] == NULL) {
			allocs[i] = p;
			return 1;
		}
	return 0;
}

static int untrack(void *p) {
	std::lock_guard<std::mutex> lock(allocs_mu);
	for (int i = 0; i < MAX_ALLOCS; i++)
		if (allocs[i] == p) {
			allocs[i] = NULL;
			return 1;
		}
	return 0;
}

// is_alloc reports whether [p, p+n) lies within one live allocation (sizes are kept in a header).
static int is_alloc(const void *p, size_t n) {
	std::lock_guard<std::mutex> lock(allocs_mu);
	for (int i = 0; i < MAX_ALLOCS; i++) {
		char *base = (char *)allocs[i];
		if (base == NULL) continue;
		size_t size = *(size_t *)(base - 256);
		if ((const char *)p >= base && (const char *)p + n <= base + size) return 1;
	}
	return 0;
}

static void *alloc(size_t n) {
	char *raw = (char *)aligned_alloc(256, 256 + ((n + 255) / 256) * 256);
	if (raw == NULL) return NULL;
	*(size_t *)raw = n;
	memset(raw + 256, 0xcd, n < (64 << 20) ? n : 4096); // device memory is not zeroed
	if (!track(raw + 256)) {
		free(raw);
		return NULL;
	}
	return raw + 256;
}

static int release(void *p) {
	if (!untrack(p)) return 0;
	free((char *)p - 256);
	return 1;
}

CUresult cuInit(unsigned int flags) {
	if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
	if (getenv("FAKECUDA_NO_DEVICE") != NULL) return CUDA_ERROR_NO_DEVICE;
	initialised = 1;
	return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *v) {
	*v = 13000;
	return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult r, const char **s) {
	*s = r == CUDA_SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR_FAKE";
	return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult r, const char **s) {
	*s = r == CUDA_SUCCESS ? "no error" : "an error of the fake driver";
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *n) {
	if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
	*n = 1;
	return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
	if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
	if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
	*d = 0;
	return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
	if (d != 0 || len < 9) return CUDA_ERROR_INVALID_VALUE;
	strcpy(name, "Fake GPU");
	return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *n, CUdevice d) {
	*n = (size_t)16 << 30;
	return d == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
	if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
	switch (a) {
	case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 4; break;
	case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
	case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
	case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *v = 2619000; break;
	case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *v = 6144; break;
	default: return CUDA_ERROR_INVALID_VALUE;
	}
	return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
	if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
	if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
	*c = (CUcontext)&ctx_token;
	return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return d == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }

CUresult cuCtxSetCurrent(CUcontext c) {
	if (c != (CUcontext)&ctx_token) return CUDA_ERROR_INVALID_CONTEXT;
	current = c;
	return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) { return need_ctx(); }

CUresult cuMemGetInfo(size_t *free, size_t *total) {
	*free = (size_t)8 << 30;
	*total = (size_t)16 << 30;
	return need_ctx();
}

static int is_stream(CUstream s) { return s != NULL && *(int *)s == stream_token; }
static int is_event(CUevent e) { return e != NULL && (*(int *)e == event_token || *(int *)e == event_token + 1); }

CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (flags != CU_STREAM_NON_BLOCKING) return CUDA_ERROR_INVALID_VALUE;
	int *p = (int *)malloc(sizeof(int));
	*p = stream_token;
	*s = (CUstream)p;
	return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
	*(int *)s = -1;
	free(s);
	return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) {
	CUresult r = need_ctx();
	return r != CUDA_SUCCESS ? r : is_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// An event holds event_token once created, event_token + 1 once recorded.
CUresult cuEventCreate(CUevent *e, unsigned int flags) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	int *p = (int *)malloc(sizeof(int));
	*p = event_token;
	*e = (CUevent)p;
	return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent e) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_event(e)) return CUDA_ERROR_INVALID_HANDLE;
	*(int *)e = -1;
	free(e);
	return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_event(e) || !is_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
	*(int *)e = event_token + 1;
	trace("record %p %p", (void *)s, (void *)e);
	return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent e) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	return is_event(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) {
	*ms = 1;
	return is_event(a) && is_event(b) ? need_ctx() : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_event(e) || flags != 0) return CUDA_ERROR_INVALID_HANDLE;
	if (*(int *)e != event_token + 1) return CUDA_ERROR_INVALID_VALUE; // never recorded
	trace("wait %p %p", (void *)s, (void *)e);
	return CUDA_SUCCESS;
}

CUresult cuMemAlloc(CUdeviceptr *p, size_t n) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (n == 0) return CUDA_ERROR_INVALID_VALUE;
	void *a = alloc(n);
	if (a == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
	*p = (CUdeviceptr)(uintptr_t)a;
	return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr p) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	return release((void *)(uintptr_t)p) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemHostAlloc(void **p, size_t n, unsigned int flags) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	*p = alloc(n);
	return *p == NULL ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

CUresult cuMemFreeHost(void *p) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	return release(p) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_alloc((void *)(uintptr_t)dst, n)) return CUDA_ERROR_INVALID_VALUE;
	memcpy((void *)(uintptr_t)dst, src, n);
	trace("htod %p %#llx %zu", (void *)s, (unsigned long long)dst, n);
	return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t n, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_alloc((void *)(uintptr_t)src, n)) return CUDA_ERROR_INVALID_VALUE;
	memcpy(dst, (void *)(uintptr_t)src, n);
	return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_alloc((void *)(uintptr_t)dst, n) || !is_alloc((void *)(uintptr_t)src, n)) return CUDA_ERROR_INVALID_VALUE;
	memmove((void *)(uintptr_t)dst, (void *)(uintptr_t)src, n);
	trace("dtod %p %#llx %#llx %zu", (void *)s, (unsigned long long)dst, (unsigned long long)src, n);
	return CUDA_SUCCESS;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_alloc((void *)(uintptr_t)dst, 4 * n)) return CUDA_ERROR_INVALID_VALUE;
	for (size_t i = 0; i < n; i++) ((unsigned *)(uintptr_t)dst)[i] = v;
	return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule *m, const void *image, unsigned int n, CUjit_option *opts, void **vals) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	char *log = NULL;
	size_t size = 0;
	for (unsigned i = 0; i < n; i++) {
		if (opts[i] == CU_JIT_ERROR_LOG_BUFFER) log = (char *)vals[i];
		if (opts[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) size = (size_t)(uintptr_t)vals[i];
	}
	if (log == NULL || size == 0) return CUDA_ERROR_INVALID_VALUE;
	if (strstr((const char *)image, ".target sm_90") == NULL) {
		snprintf(log, size, "fakecuda: the PTX is not for sm_90");
		return CUDA_ERROR_INVALID_PTX;
	}
	if (strstr((const char *)image, ".version") == NULL || strstr((const char *)image, ".target sm_90") == NULL) return CUDA_ERROR_INVALID_IMAGE;
	*m = (CUmodule)strdup((const char *)image);
	return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	free((void *)m);
	return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	char entry[256];
	snprintf(entry, sizeof entry, ".entry %s(", name);
	if (strstr((const char *)m, entry) == NULL) return CUDA_ERROR_NOT_FOUND;
	auto k = cudaemu::kernels.find(name);
	if (k == cudaemu::kernels.end()) return CUDA_ERROR_NOT_FOUND;
	*f = (CUfunction)&k->second;
	return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
	unsigned shmem, CUstream s, void **params, void **extra) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (f == NULL || !is_stream(s) || params == NULL || extra != NULL) return CUDA_ERROR_INVALID_VALUE;
	if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
	if (bx * by * bz == 0 || bx * by * bz > 1024 || shmem > 48 * 1024) return CUDA_ERROR_INVALID_VALUE;
	trace("launch %p", (void *)s);
	cudaemu::run(*(const cudaemu::Launcher *)f, {gx, gy, gz}, {bx, by, bz}, params);
	return CUDA_SUCCESS;
}
