//go:build !cgo || purego

package compute

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

var impl gonum.Implementation

func backendInit() {}

// Kernels describes the GEMM library compiled in and the bf16 kernel in use.
func Kernels() string { return "gonum (pure Go), bf16 kernel go" }

func checkBLASDims(m, k, n int) {}

// gonum's Sgemm spawns its own goroutines (GOMAXPROCS of them) as soon as the
// product has >= 4 blocks of 64×64 in m×n. We parallelise ourselves, so we
// call it on tiles of at most 64 rows × 192 columns (3 blocks), which it runs
// serially. A 192-row slab of w (192·k floats, 576 KiB at k=768) stays in L2
// while every row of a streams past it.
const (
	tileM = 64
	tileN = 192
)

// gemmNT computes dst = a·wᵀ + beta·dst on the calling goroutine, where a is
// m×k (row stride k), w is n×k (row stride k) and dst is m×n with row
// stride ldc. m, n, k >= 1.
func gemmNT(dst, a []float32, m, k int, w []float32, n, ldc int, beta float32) {
	if m <= gemvMaxM {
		// y = W·x per row of a (W row-major n×k: gonum's Sgemv, serial, SSE
		// kernel), over blocks of weight rows that stay in L2 so the
		// weights are streamed from memory once.
		rb := max(1, gemvBlockFloats/k)
		for j := 0; j < n; j += rb {
			r := min(rb, n-j)
			wj := w[j*k : (j+r)*k]
			for i := 0; i < m; i++ {
				impl.Sgemv(blas.NoTrans, r, k, 1, wj, k, a[i*k:(i+1)*k], 1, beta, dst[i*ldc+j:i*ldc+j+r], 1)
			}
		}
		return
	}
	for j := 0; j < n; j += tileN {
		nj := min(tileN, n-j)
		for i := 0; i < m; i += tileM {
			mi := min(tileM, m-i)
			impl.Sgemm(blas.NoTrans, blas.Trans, mi, nj, k, 1,
				a[i*k:(i+mi)*k], k, w[j*k:(j+nj)*k], k, beta, dst[i*ldc+j:], ldc)
		}
	}
}

// gemmNN computes dst[m×n] = a[m×k]·b[k×n] + beta·dst, all contiguous
// row-major, on the calling goroutine.
func gemmNN(dst, a, b []float32, m, k, n int, beta float32) {
	// Tile m and n so gonum stays serial (see tileM/tileN); for NoTrans·NoTrans
	// it streams whole rows of b, so tile n by column ranges.
	for j := 0; j < n; j += tileN {
		nj := min(tileN, n-j)
		for i := 0; i < m; i += tileM {
			mi := min(tileM, m-i)
			impl.Sgemm(blas.NoTrans, blas.NoTrans, mi, nj, k, 1,
				a[i*k:(i+mi)*k], k, b[j:], n, beta, dst[i*n+j:], n)
		}
	}
}

// gemvMaxM is the largest m for which gemmNT uses blocked Sgemv calls, and
// MatMulTBF16 its small scratch blocks; gemvBlockFloats is the weight block
// (512 KiB) of one Sgemv call.
const (
	gemvMaxM        = 4
	gemvBlockFloats = 128 << 10
)

// bf16Supported: the pure-Go build has no fused bf16 kernels (they are C, see bf16_kernels.c).
func bf16Supported(kind bf16Kernel) bool { return kind == bf16Go }

// bf16RowsNT has no pure-Go fast path: the caller widens the weights into a float32 buffer.
func bf16RowsNT(kind bf16Kernel, dst, a []float32, m, k int, w []uint16, n, ldc int, beta float32) bool {
	return false
}

// convertBF16SIMD has no pure-Go vector loop: ConvertBF16 uses its 64-bit one.
func convertBF16SIMD(kind bf16Kernel, dst []float32, src []uint16) bool { return false }

// gemvWhole: the pure-Go build keeps gemmNT's blocks (gonum's Sgemv has no per-call overhead to save).
func gemvWhole(dst, a []float32, m, k int, w []float32, n int, beta float32) bool { return false }
