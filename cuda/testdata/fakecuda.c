// A fake CUDA driver (libcuda.so.1) for testing the cuda package's host side on a machine without a
// GPU: TestFakeDriver builds it and runs the device tests that need no kernel results against it.
//
// "Device memory" is host memory (a CUdeviceptr is the address of a malloc'd block), copies are
// memcpy, streams run everything at once, and kernel launches only check their arguments (the
// kernels do not run: tests that read kernel results run only on a real GPU). It checks what a real
// driver would refuse: a call without the primary context current, unknown handles, launches with
// a NULL parameter array, frees of pointers it did not allocate, events waited on before they are
// recorded.
//
// Built with the cuda.h of the toolchain, so every function has the real prototype and the
// ABI-versioned name the header maps it to (cuMemAlloc is defined as cuMemAlloc_v2).

#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int track(void *p) {
	for (int i = 0; i < MAX_ALLOCS; i++)
		if (allocs[i] == NULL) {
			allocs[i] = p;
			return 1;
		}
	return 0;
}

static int untrack(void *p) {
	for (int i = 0; i < MAX_ALLOCS; i++)
		if (allocs[i] == p) {
			allocs[i] = NULL;
			return 1;
		}
	return 0;
}

// is_alloc reports whether [p, p+n) lies within one live allocation (sizes are kept in a header).
static int is_alloc(const void *p, size_t n) {
	for (int i = 0; i < MAX_ALLOCS; i++) {
		char *base = allocs[i];
		if (base == NULL) continue;
		size_t size = *(size_t *)(base - 256);
		if ((const char *)p >= base && (const char *)p + n <= base + size) return 1;
	}
	return 0;
}

static void *alloc(size_t n) {
	char *raw = aligned_alloc(256, 256 + ((n + 255) / 256) * 256);
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
	int *p = malloc(sizeof(int));
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
	int *p = malloc(sizeof(int));
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
	return *(int *)e == event_token + 1 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; // never recorded
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
	return CUDA_SUCCESS;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (!is_stream(s) || !is_alloc((void *)(uintptr_t)dst, 4 * n)) return CUDA_ERROR_INVALID_VALUE;
	for (size_t i = 0; i < n; i++) ((unsigned *)(uintptr_t)dst)[i] = v;
	return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule *m, const void *image) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (strstr(image, ".version") == NULL || strstr(image, ".target sm_90") == NULL) return CUDA_ERROR_INVALID_IMAGE;
	*m = (CUmodule)strdup(image);
	return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	free(m);
	return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	char entry[256];
	snprintf(entry, sizeof entry, ".entry %s(", name);
	if (strstr((const char *)m, entry) == NULL) return CUDA_ERROR_NOT_FOUND;
	*f = (CUfunction)strdup(name);
	return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
	unsigned shmem, CUstream s, void **params, void **extra) {
	CUresult r = need_ctx();
	if (r != CUDA_SUCCESS) return r;
	if (f == NULL || !is_stream(s) || params == NULL || extra != NULL) return CUDA_ERROR_INVALID_VALUE;
	if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
	if (bx * by * bz == 0 || bx * by * bz > 1024 || shmem > 48 * 1024) return CUDA_ERROR_INVALID_VALUE;
	return CUDA_SUCCESS;
}
