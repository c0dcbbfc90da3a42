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

#include <stdint.h>
#include <string.h>
#include <immintrin.h>

// bf16 GEMV-like kernel for m <= 4 rows of a: dst[i*ldc + j] = sum_p a[i*k+p] * bf16(w[j*k+p])
// (+ dst when accumulate). The bf16 weights are widened in registers (a shift into the high half
// of a float32 lane), so memory traffic is 2 bytes per weight instead of the 4 bytes of
// widening into a float32 buffer first. Compiled for AVX-512F through a target attribute and
// used only when the CPU has it (pregate_bf16_avx512).
__attribute__((target("avx512f")))
static void bf16_rows_avx512(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	for (int j = 0; j < n; j++) {
		const uint16_t *wr = w + (size_t)j * k;
		__m512 acc[4][2];
		for (int i = 0; i < m; i++) {
			acc[i][0] = _mm512_setzero_ps();
			acc[i][1] = _mm512_setzero_ps();
		}
		int p = 0;
		for (; p + 32 <= k; p += 32) {
			__m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(
				_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + p))), 16));
			__m512 w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
				_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(wr + p + 16))), 16));
			for (int i = 0; i < m; i++) {
				acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a + (size_t)i * k + p), acc[i][0]);
				acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(a + (size_t)i * k + p + 16), acc[i][1]);
			}
		}
		for (int i = 0; i < m; i++) {
			float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
			for (int q = p; q < k; q++) {
				uint32_t u = (uint32_t)wr[q] << 16;
				float f;
				memcpy(&f, &u, 4);
				s += f * a[(size_t)i * k + q];
			}
			float *d = dst + (size_t)i * ldc + j;
			*d = accumulate ? *d + s : s;
		}
	}
}

static int pregate_bf16_avx512(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f");
}

static void pregate_bf16_rows(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	bf16_rows_avx512(m, k, a, w, n, dst, ldc, accumulate);
}
*/
import "C"

import (
	"fmt"
	"math"
	"sync"
	"unsafe"
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

// Backend describes the GEMM backend compiled in.
func Backend() string {
	backendInit()
	return fmt.Sprintf("openblas (%s, core %s)",
		C.GoString(C.openblas_get_config()), C.GoString(C.openblas_get_corename()))
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

var bf16SIMD = sync.OnceValue(func() bool { return C.pregate_bf16_avx512() != 0 })

// bf16RowsNT computes dst = a·wᵀ (+ dst when beta is 1) for m <= gemvMaxM rows of a and bf16
// weights w[n×k], widening the weights in registers. It reports false, doing nothing, when the
// CPU lacks the instructions; the caller then widens into a float32 buffer instead.
func bf16RowsNT(dst, a []float32, m, k int, w []uint16, n, ldc int, beta float32) bool {
	if m > gemvMaxM || !bf16SIMD() {
		return false
	}
	acc := C.int(0)
	if beta != 0 {
		acc = 1
	}
	C.pregate_bf16_rows(C.int(m), C.int(k), fptr(a), (*C.uint16_t)(unsafe.Pointer(unsafe.SliceData(w))), C.int(n), fptr(dst), C.int(ldc), acc)
	return true
}
