package compute

import (
	"math"
	"math/rand/v2"
	"testing"
)

// vecKinds are the instruction sets of the vector kernels (vec_kernels.c), chosen as the bf16
// kernel is; bf16Go runs the Go loops.
var vecKinds = []bf16Kernel{bf16Go, bf16AVX2, bf16AVX512}

// siluULPs is the bound SiLU is held to, in units of float32 roundoff (2^-24, as the conformance
// suite counts; it allows 4): the Go loop rounds once (1), the vector kernels add their exp's error.
const siluULPs = 3

// TestSiLUKernels measures SiLU's relative error against float64 over 2^20 points spread evenly
// over [-90, 90] (both sides of the vector kernels' ±80 switch to float64), the special values,
// and lengths that leave a tail of every size.
func TestSiLUKernels(t *testing.T) {
	const n = 1 << 20
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(-90 + 180*float64(i)/n)
	}
	x = append(x, 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), math.SmallestNonzeroFloat32, -math.MaxFloat32, 80, -80, 80.00001, -80.00001)
	for _, kind := range vecKinds {
		t.Run(kind.String(), func(t *testing.T) {
			forceBF16Kernel(t, kind)
			for _, l := range []int{len(x), siluSIMDMin + 15, siluSIMDMin + 7} {
				in := x[len(x)-l:]
				got := append([]float32(nil), in...)
				SiLU(got)
				var worst float64
				for i, v := range in {
					f := float64(v)
					want := f / (1 + math.Exp(-f))
					g := float64(got[i])
					if g == want {
						continue
					}
					if math.IsNaN(want) {
						if !math.IsNaN(g) {
							t.Fatalf("SiLU(%v) = %v, want NaN", v, g)
						}
						continue
					}
					err := math.Abs(g-want) / math.Max(math.Abs(want), 1e-38) * (1 << 24)
					if !(err <= siluULPs) {
						t.Fatalf("SiLU(%v) = %v, want %v: %.2f ulp (bound %d)", v, g, want, err, siluULPs)
					}
					worst = max(worst, err)
				}
				if l == len(x) {
					t.Logf("worst error %.2f ulp", worst)
				}
			}
		})
	}
}

// TestAttentionKernels checks the dot-product and weighted-sum kernels of attention against
// float64 on head sizes that leave every tail of the vector widths, with strided rows.
// Tolerance: float32 summation of hd (dots) or n (sums) products, 2·terms·u relative to the sum of
// the magnitudes.
func TestAttentionKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, kind := range vecKinds {
		t.Run(kind.String(), func(t *testing.T) {
			forceBF16Kernel(t, kind)
			for _, hd := range []int{1, 7, 16, 31, 64, 100, 128} {
				for _, n := range []int{1, 5, 96} {
					stride := 4*hd + 3
					q, k := randSlice(r, hd), randSlice(r, n*stride)
					out := make([]float32, n)
					if !dotsSIMD(out, q, k, stride, 0.125) {
						for j := range out {
							out[j] = Dot(q, k[j*stride:j*stride+hd]) * 0.125
						}
					}
					for j := range n {
						var want, abs float64
						for l := range hd {
							p := float64(q[l]) * float64(k[j*stride+l])
							want, abs = want+p, abs+math.Abs(p)
						}
						want *= 0.125
						if tol := 2 * float64(hd+2) * abs * 0.125 / (1 << 24); math.Abs(float64(out[j])-want) > tol {
							t.Fatalf("hd %d n %d: score %d is %v, want %v (tolerance %.3g)", hd, n, j, out[j], want, tol)
						}
					}
					p, o := randSlice(r, n), randSlice(r, hd)
					got := append([]float32(nil), o...)
					if !wsumSIMD(got, p, k, stride) {
						for j, pj := range p {
							Axpy(got, pj, k[j*stride:j*stride+hd])
						}
					}
					for l := range hd {
						want, abs := float64(o[l]), math.Abs(float64(o[l]))
						for j := range n {
							v := float64(p[j]) * float64(k[j*stride+l])
							want, abs = want+v, abs+math.Abs(v)
						}
						if tol := 2 * float64(n+2) * abs / (1 << 24); math.Abs(float64(got[l])-want) > tol {
							t.Fatalf("hd %d n %d: output %d is %v, want %v (tolerance %.3g)", hd, n, l, got[l], want, tol)
						}
					}
				}
			}
		})
	}
}
