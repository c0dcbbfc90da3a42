package compute

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

var allBF16Kernels = []bf16Kernel{bf16Go, bf16AVX2, bf16AVX512}

// forceBF16Kernel makes MatMulTBF16 and ConvertBF16 use kind for the rest of the test, or skips the
// test where this CPU or build cannot run it. (The AVX2 kernel is forced this way on AVX-512
// machines, so both fused kernels are tested there.)
func forceBF16Kernel(t *testing.T, kind bf16Kernel) {
	t.Helper()
	if !bf16Supported(kind) {
		t.Skipf("bf16 kernel %v: not supported by this CPU or build", kind)
	}
	old := bf16Active
	bf16Active = func() bf16Kernel { return kind }
	t.Cleanup(func() { bf16Active = old })
}

// TestBF16Kernels checks every bf16 kernel against the float64 reference on odd shapes: k not a
// multiple of the vector widths (8, 16, 32), n not a multiple of the AVX2 kernel's row tiles
// (8, 4, 2), every m the fused kernels take and one past, slices starting one element off (so
// neither the weights nor the activations are 16- or 32-byte aligned), and both accumulate modes.
// Tolerance (checkClose): |got - want| <= 1e-5·(4√k + 1) + 1e-6·|want|, float32 summation error
// for N(0,1) inputs; the widening itself is exact.
func TestBF16Kernels(t *testing.T) {
	testGEMVKernels(t, func(c *CPU, dst, a []float32, m, k int, wb []uint16, _ []float32, n int, acc bool) {
		c.MatMulTBF16(dst, a, m, k, wb, n, acc)
	})
}

// TestF32GEMVKernels is TestBF16Kernels for MatMulT: the same kernels over float32 weights run its
// GEMV (m <= gemvMaxM), and bf16Go stands for OpenBLAS's sgemv there.
func TestF32GEMVKernels(t *testing.T) {
	testGEMVKernels(t, func(c *CPU, dst, a []float32, m, k int, _ []uint16, wf []float32, n int, acc bool) {
		c.MatMulT(dst, a, m, k, wf, n, acc)
	})
}

// The shapes of TestBF16Kernels: k also around the m = 1 loop's 4-vector steps (32 floats for
// AVX2, 64 for AVX-512).
var (
	gemvTestKs = []int{1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129, 771, 1024}
	gemvTestNs = []int{1, 3, 7, 8, 9, 17, 70}
)

func testGEMVKernels(t *testing.T, mul func(c *CPU, dst, a []float32, m, k int, wb []uint16, wf []float32, n int, acc bool)) {
	ks, ns := gemvTestKs, gemvTestNs
	for _, kind := range allBF16Kernels {
		t.Run(kind.String(), func(t *testing.T) {
			forceBF16Kernel(t, kind)
			forceParallel(t)
			r := rand.New(rand.NewPCG(21, 22))
			for _, th := range []int{1, 2} {
				c := NewCPU(th)
				defer c.Close()
				for m := 1; m <= gemvMaxM+1; m++ {
					for _, k := range ks {
						for _, n := range ns {
							for _, acc := range []bool{false, true} {
								// One element off: misaligned for every vector width.
								a := randSlice(r, m*k+1)[1:]
								wb, wf := bf16Weights(r, n*k+1)
								wb, wf = wb[1:], wf[1:]
								dst := randSlice(r, m*n+1)[1:]
								want := refMatMulT(dst, a, m, k, wf, n, acc)
								mul(c, dst, a, m, k, wb, wf, n, acc)
								what := fmt.Sprintf("threads=%d m=%d k=%d n=%d acc=%v", th, m, k, n, acc)
								checkClose(t, what, dst, want, 4*math.Sqrt(float64(k))+1)
							}
						}
					}
				}
			}
		})
	}
}

// TestGEMV1Alignments checks the m = 1 loop at every start of the weights within a cache line
// (0-15 floats or 0-31 bf16 past a 64-byte boundary): f32 rows on AVX-512 whose length is a
// multiple of 64 bytes are peeled to the boundary with a shifted copy of the activations, and the
// head and tail are masked vectors (bf16_tile.h), so each start exercises another split.
func TestGEMV1Alignments(t *testing.T) {
	for _, kind := range []bf16Kernel{bf16AVX2, bf16AVX512} {
		t.Run(kind.String(), func(t *testing.T) {
			forceBF16Kernel(t, kind)
			c := NewCPU(1)
			defer c.Close()
			r := rand.New(rand.NewPCG(31, 32))
			for _, k := range []int{96, 112, 128, 1024, 1040} {
				const n = 5
				a := randSlice(r, k)
				wb, wf := bf16Weights(r, n*k+64)
				for start := range 32 {
					for _, acc := range []bool{false, true} {
						what := fmt.Sprintf("k=%d start=%d acc=%v", k, start, acc)
						dst := randSlice(r, n)
						want := refMatMulT(dst, a, 1, k, wf[start:start+n*k], n, acc)
						c.MatMulTBF16(dst, a, 1, k, wb[start:start+n*k], n, acc)
						checkClose(t, "bf16 "+what, dst, want, 4*math.Sqrt(float64(k))+1)
						if start < 16 {
							dst = randSlice(r, n)
							want = refMatMulT(dst, a, 1, k, wf[start:start+n*k], n, acc)
							c.MatMulT(dst, a, 1, k, wf[start:start+n*k], n, acc)
							checkClose(t, "f32 "+what, dst, want, 4*math.Sqrt(float64(k))+1)
						}
					}
				}
			}
		})
	}
}

// TestBF16RowsStride checks the fused kernels write only their n columns of each of the m rows of
// a dst whose row stride ldc is wider than n (a chunk of a split MatMulTBF16).
func TestBF16RowsStride(t *testing.T) {
	for _, kind := range []bf16Kernel{bf16AVX2, bf16AVX512} {
		t.Run(kind.String(), func(t *testing.T) {
			if !bf16Supported(kind) {
				t.Skipf("bf16 kernel %v: not supported by this CPU or build", kind)
			}
			r := rand.New(rand.NewPCG(23, 24))
			const k, n, ldc = 45, 11, 16
			for m := 1; m <= gemvMaxM; m++ {
				a := randSlice(r, m*k)
				wb, wf := bf16Weights(r, n*k)
				dst := make([]float32, m*ldc)
				for i := range dst {
					dst[i] = 42
				}
				if !bf16RowsNT(kind, dst, a, m, k, wb, n, ldc, 1) {
					t.Fatalf("bf16RowsNT(%v) did nothing", kind)
				}
				want := refMatMulT(nil, a, m, k, wf, n, false)
				for i := 0; i < m; i++ {
					for j := 0; j < ldc; j++ {
						got := float64(dst[i*ldc+j])
						if j >= n {
							if got != 42 {
								t.Fatalf("m=%d: dst[%d][%d] = %v, written past n", m, i, j, got)
							}
							continue
						}
						if w := want[i*n+j] + 42; math.Abs(got-w) > 1e-4*math.Sqrt(k)+1e-6*math.Abs(w) {
							t.Fatalf("m=%d: dst[%d][%d] = %v, want %v", m, i, j, got, w)
						}
					}
				}
			}
		})
	}
}

func TestConvertBF16Kernels(t *testing.T) {
	for _, kind := range allBF16Kernels {
		t.Run(kind.String(), func(t *testing.T) {
			forceBF16Kernel(t, kind)
			for _, n := range []int{0, 1, 15, 16, 17, convertSIMDMin - 1, convertSIMDMin, convertSIMDMin + 9, 1000} {
				src := make([]uint16, n+1)
				for i := range src {
					src[i] = uint16(0x3f80 + 37*i) // includes Inf and NaN patterns for large i
				}
				src = src[1:] // misaligned
				dst := make([]float32, n+2)
				dst[n+1] = 42
				ConvertBF16(dst[1:], src)
				for i := range src {
					if g, w := math.Float32bits(dst[1+i]), uint32(src[i])<<16; g != w {
						t.Fatalf("n=%d: [%d] = %#x, want %#x", n, i, g, w)
					}
				}
				if dst[n+1] != 42 {
					t.Fatalf("n=%d: wrote past len(src)", n)
				}
			}
		})
	}
}

func TestChooseBF16Kernel(t *testing.T) {
	best := chooseBF16Kernel("")
	for _, k := range []bf16Kernel{bf16AVX512, bf16AVX2} {
		if bf16Supported(k) {
			if best != k {
				t.Fatalf("default kernel %v, want %v (the fastest supported)", best, k)
			}
			break
		}
	}
	t.Logf("default bf16 kernel here: %v", best)
	for _, k := range allBF16Kernels {
		want := k
		if !bf16Supported(k) {
			want = best
		}
		if got := chooseBF16Kernel(k.String()); got != want {
			t.Errorf("chooseBF16Kernel(%q) = %v, want %v", k, got, want)
		}
	}
	if got := chooseBF16Kernel("sse9"); got != best {
		t.Errorf("chooseBF16Kernel(unknown) = %v, want %v", got, best)
	}
}
