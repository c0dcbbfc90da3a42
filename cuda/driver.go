//go:build cuda

package cuda

// The driver layer: the CUDA driver API (libcuda.so.1) opened with dlopen, and one C wrapper per call
// that makes the device's context current on the calling thread before the call.
//
// Why not gorgonia.org/cu: its package init calls cuInit and os.Exit(1)s when that fails, and it
// links -lcuda, so a binary importing it cannot even start on a host without the driver (the
// dynamic loader refuses a missing libcuda.so.1 before main) and cannot give a clear error on one
// without a GPU. It also lacks cuMemHostAlloc. Ours loads the driver on Open: a host without one
// gets "cuda: no CUDA driver (libcuda.so.1): ...", an error like any other.
//
// Why dlopen and not -lcuda: the same missing-library failure at load time; and the binary built
// against CUDA 11.8's cuda.h must bind to whatever driver the host has (CUDA 13 on the GPU
// machines). The symbol names are those the 11.8 header maps each call to (cuMemAlloc →
// cuMemAlloc_v2, ...): the ABI versions a binary linked against 11.8 would bind to, which newer
// drivers keep exporting. cuda.h is still included, for the types and so that every function
// pointer is typed from its prototype (a wrong argument is a compile error, not a crash).
//
// Why the context is set inside each wrapper: a driver context is current per OS thread, and a
// goroutine may move between threads between two cgo calls, but never during one. Setting the
// context in the same C call as the driver call (cuCtxSetCurrent is a thread-local store) makes
// every call correct from any goroutine without runtime.LockOSThread or a goroutine that owns the
// context and serialises every call through a channel (a channel round trip per kernel launch
// would cost more than the launch).

/*
#cgo LDFLAGS: -ldl
#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#define PG_XSTR(s) PG_STR(s)
#define PG_STR(s) #s

// Every driver function used, by its cuda.h name; the header's macros give the ABI-versioned
// symbol (cuMemAlloc is cuMemAlloc_v2).
#define PG_FUNCS(X) \
	X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString) \
	X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceTotalMem) X(cuDeviceGetAttribute) \
	X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuCtxSynchronize) \
	X(cuMemGetInfo) \
	X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize) X(cuStreamWaitEvent) \
	X(cuEventCreate) X(cuEventDestroy) X(cuEventRecord) X(cuEventSynchronize) X(cuEventElapsedTime) \
	X(cuMemAlloc) X(cuMemFree) X(cuMemHostAlloc) X(cuMemFreeHost) \
	X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync) X(cuMemsetD32Async) \
	X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction) X(cuLaunchKernel)

#define PG_DECL(f) static __typeof__(&f) pg_##f;
PG_FUNCS(PG_DECL)

static void *pg_lib;

// cuGetProcAddress as CUDA 11.3-11.8 declare it (the unversioned symbol keeps this ABI).
typedef CUresult (*pgGetProcFn)(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);

// pgSym resolves one function: by the ABI-versioned symbol the 11.8 header names (abi), or, should
// a driver ever stop exporting it, through cuGetProcAddress by its base name at 11.8's version.
static void *pgSym(void *lib, pgGetProcFn getProc, const char *abi, const char *name) {
	void *p = dlsym(lib, abi);
	if (p == NULL && getProc != NULL && getProc(name, &p, CUDA_VERSION, 0) != CUDA_SUCCESS) p = NULL;
	return p;
}

// pgLoad opens the driver and resolves every function. It returns NULL on success, else a
// malloc'd message (the caller frees it).
static char *pgLoad(void) {
	if (pg_lib != NULL) return NULL;
	void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		const char *e = dlerror();
		return strdup(e != NULL ? e : "dlopen failed");
	}
	pgGetProcFn getProc = (pgGetProcFn)dlsym(lib, "cuGetProcAddress");
#define PG_SYM(f) \
	pg_##f = (__typeof__(&f))pgSym(lib, getProc, PG_XSTR(f), #f); \
	if (pg_##f == NULL) return strdup("libcuda.so.1 lacks " PG_XSTR(f));
	PG_FUNCS(PG_SYM)
#undef PG_SYM
	pg_lib = lib;
	return NULL;
}

static CUresult pgInit(void) { return pg_cuInit(0); }
static CUresult pgDriverVersion(int *v) { return pg_cuDriverGetVersion(v); }
static const char *pgErrorName(CUresult r) {
	const char *s = NULL;
	if (pg_cuGetErrorName == NULL || pg_cuGetErrorName(r, &s) != CUDA_SUCCESS || s == NULL) return "CUDA_ERROR_UNKNOWN_CODE";
	return s;
}
static const char *pgErrorString(CUresult r) {
	const char *s = NULL;
	if (pg_cuGetErrorString == NULL || pg_cuGetErrorString(r, &s) != CUDA_SUCCESS || s == NULL) return "unknown error";
	return s;
}
static CUresult pgDeviceCount(int *n) { return pg_cuDeviceGetCount(n); }
static CUresult pgDeviceGet(CUdevice *d, int ordinal) { return pg_cuDeviceGet(d, ordinal); }
static CUresult pgDeviceName(char *buf, int n, CUdevice d) { return pg_cuDeviceGetName(buf, n, d); }
static CUresult pgDeviceTotalMem(size_t *n, CUdevice d) { return pg_cuDeviceTotalMem(n, d); }
static CUresult pgDeviceAttribute(int *v, int attr, CUdevice d) { return pg_cuDeviceGetAttribute(v, (CUdevice_attribute)attr, d); }
static CUresult pgPrimaryCtxRetain(CUcontext *c, CUdevice d) { return pg_cuDevicePrimaryCtxRetain(c, d); }
static CUresult pgPrimaryCtxRelease(CUdevice d) { return pg_cuDevicePrimaryCtxRelease(d); }

// The calls below run in the device's context: they make it current on this thread first.
#define PG_CTX(c) do { CUresult r_ = pg_cuCtxSetCurrent(c); if (r_ != CUDA_SUCCESS) return r_; } while (0)

static CUresult pgCtxSynchronize(CUcontext c) { PG_CTX(c); return pg_cuCtxSynchronize(); }
static CUresult pgMemGetInfo(CUcontext c, size_t *free, size_t *total) { PG_CTX(c); return pg_cuMemGetInfo(free, total); }
static CUresult pgStreamCreate(CUcontext c, CUstream *s) { PG_CTX(c); return pg_cuStreamCreate(s, CU_STREAM_NON_BLOCKING); }
static CUresult pgStreamDestroy(CUcontext c, CUstream s) { PG_CTX(c); return pg_cuStreamDestroy(s); }
static CUresult pgStreamSynchronize(CUcontext c, CUstream s) { PG_CTX(c); return pg_cuStreamSynchronize(s); }
static CUresult pgStreamWaitEvent(CUcontext c, CUstream s, CUevent e) { PG_CTX(c); return pg_cuStreamWaitEvent(s, e, 0); }
// Events of the copy stream block the waiting thread rather than spin it (a copy takes a
// millisecond or more; a spinning waiter would take a core from the engine).
static CUresult pgEventCreate(CUcontext c, CUevent *e, int timing) {
	PG_CTX(c);
	return pg_cuEventCreate(e, timing ? CU_EVENT_BLOCKING_SYNC : (CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC));
}
static CUresult pgEventDestroy(CUcontext c, CUevent e) { PG_CTX(c); return pg_cuEventDestroy(e); }
static CUresult pgEventRecord(CUcontext c, CUevent e, CUstream s) { PG_CTX(c); return pg_cuEventRecord(e, s); }
static CUresult pgEventSynchronize(CUcontext c, CUevent e) { PG_CTX(c); return pg_cuEventSynchronize(e); }
static CUresult pgEventElapsed(CUcontext c, float *ms, CUevent a, CUevent b) { PG_CTX(c); return pg_cuEventElapsedTime(ms, a, b); }
static CUresult pgMemAlloc(CUcontext c, CUdeviceptr *p, size_t n) { PG_CTX(c); return pg_cuMemAlloc(p, n); }
static CUresult pgMemFree(CUcontext c, CUdeviceptr p) { PG_CTX(c); return pg_cuMemFree(p); }
// Portable: usable from any context (there is one per device here, but it costs nothing).
static CUresult pgMemHostAlloc(CUcontext c, void **p, size_t n) { PG_CTX(c); return pg_cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_PORTABLE); }
static CUresult pgMemFreeHost(CUcontext c, void *p) { PG_CTX(c); return pg_cuMemFreeHost(p); }
static CUresult pgMemcpyHtoDAsync(CUcontext c, CUdeviceptr dst, const void *src, size_t n, CUstream s) {
	PG_CTX(c);
	return pg_cuMemcpyHtoDAsync(dst, src, n, s);
}
static CUresult pgMemcpyDtoHAsync(CUcontext c, void *dst, CUdeviceptr src, size_t n, CUstream s) {
	PG_CTX(c);
	return pg_cuMemcpyDtoHAsync(dst, src, n, s);
}
static CUresult pgMemcpyDtoDAsync(CUcontext c, CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
	PG_CTX(c);
	return pg_cuMemcpyDtoDAsync(dst, src, n, s);
}
static CUresult pgMemsetD32Async(CUcontext c, CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
	PG_CTX(c);
	return pg_cuMemsetD32Async(dst, v, n, s);
}
static CUresult pgModuleLoadData(CUcontext c, CUmodule *m, const void *image) { PG_CTX(c); return pg_cuModuleLoadData(m, image); }
static CUresult pgModuleUnload(CUcontext c, CUmodule m) { PG_CTX(c); return pg_cuModuleUnload(m); }
static CUresult pgModuleGetFunction(CUcontext c, CUfunction *f, CUmodule m, const char *name) {
	PG_CTX(c);
	return pg_cuModuleGetFunction(f, m, name);
}

// pgLaunch launches f with its n parameters, which start at offs[i] in buf: the driver copies each
// (its size from the kernel's image) before returning.
static CUresult pgLaunch(CUcontext c, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
	unsigned bx, unsigned by, unsigned bz, unsigned shmem, CUstream s, char *buf, const int *offs, int n) {
	void *kp[32];
	if (n < 0 || n > 32) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < n; i++) kp[i] = buf + offs[i];
	PG_CTX(c);
	return pg_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, n > 0 ? kp : NULL, NULL);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// ErrNoDriver: the host has no CUDA driver (libcuda.so.1 did not load) or it did not initialise.
var ErrNoDriver = errors.New("cuda: no CUDA driver")

// ErrNoDevice: the driver has no device of the requested ordinal.
var ErrNoDevice = errors.New("cuda: device not found")

// ErrOutOfMemory: device or pinned host memory is exhausted (a driver call returned
// CUDA_ERROR_OUT_OF_MEMORY, or the expert arena has no free range of the size asked).
var ErrOutOfMemory = errors.New("cuda: out of memory")

// Error is a failed driver call.
type Error struct {
	Op   string // the driver function ("cuMemAlloc")
	Code int    // its CUresult
	Name string // "CUDA_ERROR_OUT_OF_MEMORY"
	Desc string // the driver's description
}

func (e *Error) Error() string { return fmt.Sprintf("cuda: %s: %s (%s)", e.Op, e.Name, e.Desc) }

// Is makes errors.Is(err, ErrOutOfMemory) hold for an out-of-memory result.
func (e *Error) Is(target error) bool {
	return target == ErrOutOfMemory && e.Code == C.CUDA_ERROR_OUT_OF_MEMORY
}

// check turns a CUresult into an error naming op.
func check(op string, r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return &Error{Op: op, Code: int(r), Name: C.GoString(C.pgErrorName(r)), Desc: C.GoString(C.pgErrorString(r))}
}

var (
	loadOnce sync.Once
	loadErr  error
)

// loadDriver opens libcuda.so.1 and initialises the driver, once per process.
func loadDriver() error {
	loadOnce.Do(func() {
		if msg := C.pgLoad(); msg != nil {
			loadErr = fmt.Errorf("%w (libcuda.so.1): %s", ErrNoDriver, C.GoString(msg))
			C.free(unsafe.Pointer(msg))
			return
		}
		if err := check("cuInit", C.pgInit()); err != nil {
			loadErr = fmt.Errorf("%w (libcuda.so.1): %w", ErrNoDriver, err)
		}
	})
	return loadErr
}

// DriverVersion returns the driver's CUDA version as major·1000 + minor·10 (13000 for 13.0).
func DriverVersion() (int, error) {
	if err := loadDriver(); err != nil {
		return 0, err
	}
	var v C.int
	if err := check("cuDriverGetVersion", C.pgDriverVersion(&v)); err != nil {
		return 0, err
	}
	return int(v), nil
}

// DeviceCount returns the number of CUDA devices.
func DeviceCount() (int, error) {
	if err := loadDriver(); err != nil {
		return 0, err
	}
	var n C.int
	if err := check("cuDeviceGetCount", C.pgDeviceCount(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// devptr is a device address (CUdeviceptr).
type devptr uint64

// ctx is one device's primary context with the driver calls made in it.
type ctx struct {
	c C.CUcontext
}

func (x ctx) synchronize() error { return check("cuCtxSynchronize", C.pgCtxSynchronize(x.c)) }

func (x ctx) memInfo() (free, total int64, err error) {
	var f, t C.size_t
	err = check("cuMemGetInfo", C.pgMemGetInfo(x.c, &f, &t))
	return int64(f), int64(t), err
}

// stream is a CUstream, created non-blocking: it never waits for the legacy default stream.
type stream struct{ s C.CUstream }

func (x ctx) newStream() (stream, error) {
	var s C.CUstream
	err := check("cuStreamCreate", C.pgStreamCreate(x.c, &s))
	return stream{s}, err
}

func (x ctx) destroyStream(s stream) error {
	return check("cuStreamDestroy", C.pgStreamDestroy(x.c, s.s))
}

func (x ctx) syncStream(s stream) error {
	return check("cuStreamSynchronize", C.pgStreamSynchronize(x.c, s.s))
}

// waitEvent makes s wait, on the device, for e's last record: nothing blocks on the host.
func (x ctx) waitEvent(s stream, e event) error {
	return check("cuStreamWaitEvent", C.pgStreamWaitEvent(x.c, s.s, e.e))
}

// event is a CUevent.
type event struct{ e C.CUevent }

func (x ctx) newEvent(timing bool) (event, error) {
	var e C.CUevent
	t := C.int(0)
	if timing {
		t = 1
	}
	err := check("cuEventCreate", C.pgEventCreate(x.c, &e, t))
	return event{e}, err
}

func (x ctx) destroyEvent(e event) error { return check("cuEventDestroy", C.pgEventDestroy(x.c, e.e)) }

func (x ctx) record(e event, s stream) error {
	return check("cuEventRecord", C.pgEventRecord(x.c, e.e, s.s))
}

func (x ctx) syncEvent(e event) error {
	return check("cuEventSynchronize", C.pgEventSynchronize(x.c, e.e))
}

// elapsed is the time between two recorded timing events, in milliseconds.
func (x ctx) elapsed(a, b event) (float32, error) {
	var ms C.float
	err := check("cuEventElapsedTime", C.pgEventElapsed(x.c, &ms, a.e, b.e))
	return float32(ms), err
}

func (x ctx) memAlloc(n int64) (devptr, error) {
	var p C.CUdeviceptr
	if err := check("cuMemAlloc", C.pgMemAlloc(x.c, &p, C.size_t(n))); err != nil {
		return 0, fmt.Errorf("%w (%d bytes)", err, n)
	}
	return devptr(p), nil
}

func (x ctx) memFree(p devptr) error { return check("cuMemFree", C.pgMemFree(x.c, C.CUdeviceptr(p))) }

// hostAlloc returns n bytes of pinned (page-locked) host memory, which the DMA engines copy from
// asynchronously.
func (x ctx) hostAlloc(n int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if err := check("cuMemHostAlloc", C.pgMemHostAlloc(x.c, &p, C.size_t(n))); err != nil {
		return nil, fmt.Errorf("%w (%d bytes)", err, n)
	}
	return p, nil
}

func (x ctx) hostFree(p unsafe.Pointer) error { return check("cuMemFreeHost", C.pgMemFreeHost(x.c, p)) }

// copyHtoD enqueues a host-to-device copy on s. From pinned memory it is a DMA that overlaps
// everything; from pageable (Go) memory the driver stages the bytes before returning, so src may be
// reused at once either way (pinned src must stay unchanged until the copy completes).
func (x ctx) copyHtoD(dst devptr, src unsafe.Pointer, n int64, s stream) error {
	return check("cuMemcpyHtoDAsync", C.pgMemcpyHtoDAsync(x.c, C.CUdeviceptr(dst), src, C.size_t(n), s.s))
}

// copyDtoH enqueues a device-to-host copy on s; into pageable memory it returns once the copy has
// completed.
func (x ctx) copyDtoH(dst unsafe.Pointer, src devptr, n int64, s stream) error {
	return check("cuMemcpyDtoHAsync", C.pgMemcpyDtoHAsync(x.c, dst, C.CUdeviceptr(src), C.size_t(n), s.s))
}

func (x ctx) copyDtoD(dst, src devptr, n int64, s stream) error {
	return check("cuMemcpyDtoDAsync", C.pgMemcpyDtoDAsync(x.c, C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), s.s))
}

// memset32 enqueues setting n 32-bit words at dst to v.
func (x ctx) memset32(dst devptr, v uint32, n int64, s stream) error {
	return check("cuMemsetD32Async", C.pgMemsetD32Async(x.c, C.CUdeviceptr(dst), C.uint(v), C.size_t(n), s.s))
}

// module is a loaded CUmodule.
type module struct{ m C.CUmodule }

// loadModule JIT-compiles a PTX image (NUL-terminated) for the device.
func (x ctx) loadModule(image []byte) (module, error) {
	var m C.CUmodule
	p := C.CBytes(image)
	defer C.free(p)
	err := check("cuModuleLoadData", C.pgModuleLoadData(x.c, &m, p))
	return module{m}, err
}

func (x ctx) unloadModule(m module) error { return check("cuModuleUnload", C.pgModuleUnload(x.c, m.m)) }

// function is a kernel of a loaded module, with its name and parameter signature (see
// signatures).
type function struct {
	f         C.CUfunction
	name, sig string
}

func (x ctx) function(m module, name string) (function, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f C.CUfunction
	if err := check("cuModuleGetFunction", C.pgModuleGetFunction(x.c, &f, m.m, cs)); err != nil {
		return function{}, fmt.Errorf("%w: kernel %s", err, name)
	}
	return function{f: f}, nil
}

// dim3 is a launch's grid or block shape.
type dim3 struct{ x, y, z uint32 }

// launch enqueues f on s with the parameters a, which must match f's signature.
func (x ctx) launch(f function, grid, block dim3, shmem uint32, s stream, a *params) error {
	if string(a.kinds) != f.sig {
		return fmt.Errorf("cuda: launch of %s with parameters %q, the kernel takes %q", f.name, a.kinds, f.sig)
	}
	if grid.x == 0 || grid.y == 0 || grid.z == 0 {
		return fmt.Errorf("cuda: launch of %s with an empty grid %v", f.name, grid)
	}
	var buf *C.char
	var offs *C.int
	if len(a.offs) > 0 {
		buf, offs = (*C.char)(unsafe.Pointer(&a.buf[0])), (*C.int)(unsafe.Pointer(&a.offs[0]))
	}
	return check("cuLaunchKernel", C.pgLaunch(x.c, f.f, C.uint(grid.x), C.uint(grid.y), C.uint(grid.z),
		C.uint(block.x), C.uint(block.y), C.uint(block.z), C.uint(shmem), s.s, buf, offs, C.int(len(a.offs))))
}

// codeNoDevice is cuInit's result on a host whose driver sees no GPU.
const codeNoDevice = C.CUDA_ERROR_NO_DEVICE

// device attributes used.
const (
	attrSMs      = C.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
	attrCCMajor  = C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
	attrCCMinor  = C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
	attrMemClock = C.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE
	attrBusWidth = C.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH
)

// cudev is a CUdevice with the queries made before a context exists.
type cudev struct{ d C.CUdevice }

func getDevice(ordinal int) (cudev, error) {
	var d C.CUdevice
	err := check("cuDeviceGet", C.pgDeviceGet(&d, C.int(ordinal)))
	return cudev{d}, err
}

func (d cudev) name() (string, error) {
	var buf [256]C.char
	if err := check("cuDeviceGetName", C.pgDeviceName(&buf[0], C.int(len(buf)), d.d)); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

func (d cudev) totalMem() (int64, error) {
	var n C.size_t
	err := check("cuDeviceTotalMem", C.pgDeviceTotalMem(&n, d.d))
	return int64(n), err
}

func (d cudev) attribute(attr C.int) (int, error) {
	var v C.int
	err := check("cuDeviceGetAttribute", C.pgDeviceAttribute(&v, attr, d.d))
	return int(v), err
}

func (d cudev) retainPrimary() (ctx, error) {
	var c C.CUcontext
	err := check("cuDevicePrimaryCtxRetain", C.pgPrimaryCtxRetain(&c, d.d))
	return ctx{c}, err
}

func (d cudev) releasePrimary() error {
	return check("cuDevicePrimaryCtxRelease", C.pgPrimaryCtxRelease(d.d))
}
