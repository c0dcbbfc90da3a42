//go:build cgo && !purego

package compute

// This file is hand-written rather than using gonum.org/v1/netlib because
// netlib's cgo bindings carry no link flags of their own: every user (and CI)
// would have to export CGO_LDFLAGS="-lopenblas" to build. Here the flag lives
// in the #cgo directive below, so a plain `go build` works wherever
// libopenblas-dev is installed (Debian/Ubuntu: apt-get install libopenblas-dev).
//
// The prototypes are declared here instead of including <cblas.h>: on Debian
// that header is an "alternatives" symlink which may point at a reference
// CBLAS lacking openblas_set_num_threads. blasint is a 32-bit int in the
// standard (non-"64") libopenblas; CBLAS enums are passed as int.

/*
#cgo LDFLAGS: -lopenblas

void openblas_set_num_threads(int num_threads);
char* openblas_get_config(void);
char* openblas_get_corename(void);

void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
	float alpha, const float *a, int lda, const float *b, int ldb,
	float beta, float *c, int ldc);
void cblas_sgemv(int order, int trans, int m, int n,
	float alpha, const float *a, int lda, const float *x, int incx,
	float beta, float *y, int incy);

#include "bf16_kernels.h"
*/
import "C"

import (
	"fmt"
	"math"
	"sync"
	"unsafe"

	"golang.org/x/sys/cpu"
)

const (
	cblasRowMajor = 101
	cblasNoTrans  = 111
	cblasTrans    = 112
)

var blasOnce sync.Once

// backendInit forces OpenBLAS to one thread: we parallelise ourselves by
// giving each of our threads its own block of output features, and OpenBLAS
// threads on top of that would oversubscribe the cores.
func backendInit() {
	blasOnce.Do(func() { C.openblas_set_num_threads(1) })
}

// Kernels describes the GEMM library compiled in and the bf16 kernel in use.
func Kernels() string {
	backendInit()
	return fmt.Sprintf("openblas (%s, core %s), bf16 kernel %v",
		C.GoString(C.openblas_get_config()), C.GoString(C.openblas_get_corename()), bf16Active())
}

func checkBLASDims(m, k, n int) {
	if m > math.MaxInt32 || k > math.MaxInt32 || n > math.MaxInt32 {
		panic(fmt.Sprintf("compute: dimension too large for 32-bit BLAS: m=%d k=%d n=%d", m, k, n))
	}
}

func fptr(s []float32) *C.float { return (*C.float)(unsafe.Pointer(unsafe.SliceData(s))) }

// gemmNT computes dst = a·wᵀ + beta·dst on the calling thread, where a is
// m×k (row stride k), w is n×k (row stride k) and dst is m×n with row
// stride ldc. m, n, k >= 1; the slices are long enough (checked by callers).
func gemmNT(dst, a []float32, m, k int, w []float32, n, ldc int, beta float32) {
	if m <= gemvMaxM {
		// GEMV-like: one sgemv (y = W·x, row-major W without transposition)
		// per row of a, over blocks of weight rows small enough to stay in
		// L2, so that the weights are streamed from memory once.
		//  - m=1: sgemv beats sgemm(m=1) 2.5× on this OpenBLAS (250 vs
		//    630µs for 768×3072, BenchmarkGEMV1).
		//  - m=2..4: OpenBLAS's sgemm packs the whole weight matrix for a
		//    few rows; blocked sgemv measured m=2 820→345µs, m=4 566→525µs
		//    on 768×3072; from m=8 on sgemm wins.
		// The blocks also keep every cgo call short (~14µs): a goroutine
		// that sits in one long cgo call has its P retaken by sysmon, and
		// the resulting P/M shuffling was seen (runtime trace: scheduler
		// latency) to delay the other goroutine of a 2-thread GEMV by a
		// whole chunk.
		rb := max(1, gemvBlockFloats/k)
		if kind := bf16Active(); kind != bf16Go {
			// The bf16 kernels over f32 weights (bf16_kernels.c): all m rows at once, no per-call
			// cost beyond cgo's, and at m = 1 one sequential stream per block.
			acc := C.int(0)
			if beta != 0 {
				acc = 1
			}
			for j := 0; j < n; j += rb {
				r := min(rb, n-j)
				if kind == bf16AVX512 {
					C.pregate_f32_rows_avx512(C.int(m), C.int(k), fptr(a), fptr(w[j*k:]), C.int(r), fptr(dst[j:]), C.int(ldc), acc)
				} else {
					C.pregate_f32_rows_avx2(C.int(m), C.int(k), fptr(a), fptr(w[j*k:]), C.int(r), fptr(dst[j:]), C.int(ldc), acc)
				}
			}
			return
		}
		for j := 0; j < n; j += rb {
			r := min(rb, n-j)
			for i := 0; i < m; i++ {
				C.cblas_sgemv(cblasRowMajor, cblasNoTrans, C.int(r), C.int(k),
					1, fptr(w[j*k:]), C.int(k), fptr(a[i*k:]), 1, C.float(beta), fptr(dst[i*ldc+j:]), 1)
			}
		}
		return
	}
	C.cblas_sgemm(cblasRowMajor, cblasNoTrans, cblasTrans, C.int(m), C.int(n), C.int(k),
		1, fptr(a), C.int(k), fptr(w), C.int(k), C.float(beta), fptr(dst), C.int(ldc))
}

// gemvWhole computes dst = a·wᵀ + beta·dst for m <= gemvMaxM rows of a with one sgemv per row
// over all n weight rows, for MatMulT on one thread: the blocks of gemmNT exist for the 2-thread
// case (see gemvBlockFloats), and on one thread they only add OpenBLAS's ~1µs per call (a
// mixtral-bench f32 token is ~1,800 blocks). It reports false, doing nothing, for larger m and
// where the package's own kernels run the GEMV (any bf16 kernel but bf16Go: CPUs without AVX2).
func gemvWhole(dst, a []float32, m, k int, w []float32, n int, beta float32) bool {
	if m > gemvMaxM || bf16Active() != bf16Go {
		return false
	}
	for i := 0; i < m; i++ {
		C.cblas_sgemv(cblasRowMajor, cblasNoTrans, C.int(n), C.int(k),
			1, fptr(w), C.int(k), fptr(a[i*k:]), 1, C.float(beta), fptr(dst[i*n:]), 1)
	}
	return true
}

// gemvMaxM is the largest m for which gemmNT uses blocked sgemv calls
// instead of sgemm (see gemmNT).
const gemvMaxM = 4

// gemvBlockFloats is the weight block of one sgemv call: 512 KiB, ~14µs of
// streaming. Each OpenBLAS sgemv call costs ~1µs of fixed overhead (1-thread
// 768×3072: 32K-float blocks 324µs, 64K 289µs, 128K 270µs, one call 251µs),
// but calls much longer than sysmon's 20µs tick get their P retaken, which
// with GOMAXPROCS == threads made the 2-thread GEMV intermittently slower
// than the 1-thread one (215-355µs vs 250µs); with 128K-float blocks it is
// 130-145µs.
const gemvBlockFloats = 128 << 10

// gemmNN computes dst[m×n] = a[m×k]·b[k×n] + beta·dst, all contiguous
// row-major, on the calling thread.
func gemmNN(dst, a, b []float32, m, k, n int, beta float32) {
	C.cblas_sgemm(cblasRowMajor, cblasNoTrans, cblasNoTrans, C.int(m), C.int(n), C.int(k),
		1, fptr(a), C.int(k), fptr(b), C.int(n), C.float(beta), fptr(dst), C.int(n))
}

// Unblocked OpenBLAS calls, for BenchmarkGEMV1 (sgemv vs sgemm at m=1).
func blasSgemmNT(dst, a []float32, m, k int, w []float32, n int) {
	C.cblas_sgemm(cblasRowMajor, cblasNoTrans, cblasTrans, C.int(m), C.int(n), C.int(k),
		1, fptr(a), C.int(k), fptr(w), C.int(k), 0, fptr(dst), C.int(n))
}

func blasSgemv(dst, x []float32, k int, w []float32, n int) {
	C.cblas_sgemv(cblasRowMajor, cblasNoTrans, C.int(n), C.int(k),
		1, fptr(w), C.int(k), fptr(x), 1, 0, fptr(dst), 1)
}

// bf16Supported reports whether this CPU (and OS) can run kernel kind.
func bf16Supported(kind bf16Kernel) bool {
	switch kind {
	case bf16Go:
		return true
	case bf16AVX2:
		return cpu.X86.HasAVX2 && cpu.X86.HasFMA
	case bf16AVX512:
		return cpu.X86.HasAVX512F && cpu.X86.HasAVX2 // AVX2 for the widening of m > gemvMaxM
	}
	return false
}

// bf16RowsNT computes dst = a·wᵀ (+ dst when beta is 1) for m <= gemvMaxM rows of a and bf16
// weights w[n×k], widening the weights in registers with the fused kernel kind. It reports false,
// doing nothing, for bf16Go or m > gemvMaxM; the caller then widens into a float32 buffer instead.
func bf16RowsNT(kind bf16Kernel, dst, a []float32, m, k int, w []uint16, n, ldc int, beta float32) bool {
	if m > gemvMaxM {
		return false
	}
	acc := C.int(0)
	if beta != 0 {
		acc = 1
	}
	wp := (*C.uint16_t)(unsafe.Pointer(unsafe.SliceData(w)))
	switch kind {
	case bf16AVX2:
		C.pregate_bf16_rows_avx2(C.int(m), C.int(k), fptr(a), wp, C.int(n), fptr(dst), C.int(ldc), acc)
	case bf16AVX512:
		C.pregate_bf16_rows_avx512(C.int(m), C.int(k), fptr(a), wp, C.int(n), fptr(dst), C.int(ldc), acc)
	default:
		return false
	}
	return true
}

// convertBF16SIMD is ConvertBF16's vector loop; it reports false, doing nothing, where the
// kernel in use is bf16Go.
func convertBF16SIMD(kind bf16Kernel, dst []float32, src []uint16) bool {
	if kind == bf16Go {
		return false
	}
	C.pregate_convert_bf16_avx2(fptr(dst), (*C.uint16_t)(unsafe.Pointer(unsafe.SliceData(src))), C.size_t(len(src)))
	return true
}
