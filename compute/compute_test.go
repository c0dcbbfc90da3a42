package compute

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// refMatMulT is the float64 reference: a[m×k]·w[n×k]ᵀ (+ dst0).
func refMatMulT(dst0, a []float32, m, k int, w []float32, n int, accumulate bool) []float64 {
	out := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for l := 0; l < k; l++ {
				s += float64(a[i*k+l]) * float64(w[j*k+l])
			}
			if accumulate {
				s += float64(dst0[i*n+j])
			}
			out[i*n+j] = s
		}
	}
	return out
}

// checkClose compares got with want using a tolerance relative to the scale
// of the products (sum |a||w|), which is what float32 rounding error scales
// with.
func checkClose(t *testing.T, what string, got []float32, want []float64, scale float64) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("%s: len %d < %d", what, len(got), len(want))
	}
	for i, w := range want {
		if d := math.Abs(float64(got[i]) - w); !(d <= 1e-5*scale+1e-6*math.Abs(w)) {
			t.Fatalf("%s: [%d] got %v want %v (|diff| %g, scale %g)", what, i, got[i], w, d, scale)
		}
	}
}

type shape struct{ m, k, n int }

var matShapes = []shape{
	{1, 1, 1}, {1, 1, 7}, {1, 768, 3}, {1, 64, 37}, {1, 33, 1000},
	{2, 5, 2}, {3, 1, 5}, {4, 17, 65}, {5, 64, 2}, {7, 13, 1}, {16, 96, 80},
	{33, 48, 130}, {3, 4096, 40}, {64, 32, 8}, {70, 20, 3}, {9, 257, 200},
}

func withThreads(t *testing.T, f func(t *testing.T, c *CPU)) {
	for _, th := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("threads=%d", th), func(t *testing.T) {
			c := NewCPU(th)
			defer c.Close()
			if c.Threads() != th {
				t.Fatalf("Threads() = %d", c.Threads())
			}
			f(t, c)
		})
	}
}

// forceParallel makes every MatMulT take the parallel path for the duration
// of a test, however small.
func forceParallel(t *testing.T) {
	old := minParWork
	minParWork = 0
	t.Cleanup(func() { minParWork = old })
}

func TestMatMulT(t *testing.T) {
	for _, par := range []bool{false, true} {
		t.Run(fmt.Sprintf("forceParallel=%v", par), func(t *testing.T) {
			if par {
				forceParallel(t)
			}
			withThreads(t, func(t *testing.T, c *CPU) {
				r := rand.New(rand.NewPCG(1, 2))
				for _, s := range matShapes {
					for _, acc := range []bool{false, true} {
						a := randSlice(r, s.m*s.k)
						w := randSlice(r, s.n*s.k)
						dst := randSlice(r, s.m*s.n+3) // +3 sentinels past the end
						want := refMatMulT(dst, a, s.m, s.k, w, s.n, acc)
						tail := append([]float32(nil), dst[s.m*s.n:]...)
						c.MatMulT(dst, a, s.m, s.k, w, s.n, acc)
						name := fmt.Sprintf("MatMulT %dx%dx%d acc=%v", s.m, s.k, s.n, acc)
						checkClose(t, name, dst, want, 4*math.Sqrt(float64(s.k))+1)
						for i, v := range tail {
							if dst[s.m*s.n+i] != v {
								t.Fatalf("%s wrote past the end", name)
							}
						}
					}
				}
			})
		})
	}
}

func TestMatMulTLarge(t *testing.T) {
	// Shapes big enough for the default (unforced) parallel plan, both
	// split directions, plus a direct comparison between thread counts.
	r := rand.New(rand.NewPCG(3, 4))
	for _, s := range []shape{{1, 768, 3072}, {3, 512, 1000}, {40, 256, 8}, {100, 130, 300}} {
		a := randSlice(r, s.m*s.k)
		w := randSlice(r, s.n*s.k)
		want := refMatMulT(nil, a, s.m, s.k, w, s.n, false)
		for _, th := range []int{1, 2, 3} {
			c := NewCPU(th)
			dst := make([]float32, s.m*s.n)
			c.MatMulT(dst, a, s.m, s.k, w, s.n, false)
			checkClose(t, fmt.Sprintf("%v threads=%d", s, th), dst, want, 4*math.Sqrt(float64(s.k)))
			c.Close()
		}
	}
}

func TestMatMulTSerialAndZeroK(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, s := range matShapes {
		a := randSlice(r, s.m*s.k)
		w := randSlice(r, s.n*s.k)
		dst := randSlice(r, s.m*s.n)
		want := refMatMulT(dst, a, s.m, s.k, w, s.n, true)
		MatMulTSerial(dst, a, s.m, s.k, w, s.n, true)
		checkClose(t, fmt.Sprint("serial ", s), dst, want, 4*math.Sqrt(float64(s.k))+1)
	}
	c := NewCPU(2)
	defer c.Close()
	dst := []float32{1, 2, 3, 4}
	c.MatMulT(dst, nil, 2, 0, nil, 2, true)
	if dst[3] != 4 {
		t.Fatal("k=0 accumulate changed dst")
	}
	c.MatMulT(dst, nil, 2, 0, nil, 2, false)
	c.MatMulTBF16(dst, nil, 0, 5, make([]uint16, 10), 2, false) // m=0: no-op
	for _, v := range dst {
		if v != 0 {
			t.Fatal("k=0 did not zero dst")
		}
	}
}

func TestMatMulTPanicsOnShortSlices(t *testing.T) {
	c := NewCPU(1)
	defer c.Close()
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "size mismatch") {
			t.Fatalf("recover() = %v", r)
		}
	}()
	c.MatMulT(make([]float32, 4), make([]float32, 6), 2, 3, make([]float32, 5), 2, false)
}

func bf16Weights(r *rand.Rand, n int) ([]uint16, []float32) {
	wb := make([]uint16, n)
	wf := make([]float32, n)
	for i := range wb {
		wb[i] = Float32ToBF16(float32(r.NormFloat64()))
		wf[i] = BF16ToFloat32(wb[i])
	}
	return wb, wf
}

func TestMatMulTBF16(t *testing.T) {
	for _, par := range []bool{false, true} {
		t.Run(fmt.Sprintf("forceParallel=%v", par), func(t *testing.T) {
			if par {
				forceParallel(t)
			}
			withThreads(t, func(t *testing.T, c *CPU) {
				r := rand.New(rand.NewPCG(7, 8))
				shapes := append(matShapes, shape{1, 768, 300}, shape{6, 300, 150}, shape{6, 2048, 300}, shape{2, 4096, 9})
				for _, s := range shapes {
					for _, acc := range []bool{false, true} {
						a := randSlice(r, s.m*s.k)
						wb, wf := bf16Weights(r, s.n*s.k)
						dst := randSlice(r, s.m*s.n)
						want := refMatMulT(dst, a, s.m, s.k, wf, s.n, acc)
						c.MatMulTBF16(dst, a, s.m, s.k, wb, s.n, acc)
						checkClose(t, fmt.Sprintf("bf16 %v acc=%v", s, acc), dst, want, 4*math.Sqrt(float64(s.k))+1)
					}
				}
			})
		})
	}
}

func TestBF16Conversion(t *testing.T) {
	cases := []struct {
		f float32
		b uint16
	}{
		{1, 0x3f80}, {-2, 0xc000}, {0, 0}, {float32(math.Inf(1)), 0x7f80},
		{1 + 1.0/256, 0x3f80},                      // tie -> even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie -> even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above half -> up
		{math.Float32frombits(0x7f7fffff), 0x7f80}, // rounds to +Inf
	}
	for _, c := range cases {
		if got := Float32ToBF16(c.f); got != c.b {
			t.Errorf("Float32ToBF16(%v) = %#x, want %#x", c.f, got, c.b)
		}
	}
	if nan := Float32ToBF16(float32(math.NaN())); BF16ToFloat32(nan) == BF16ToFloat32(nan) {
		t.Error("NaN did not stay NaN")
	}
	for n := 0; n < 19; n++ {
		src := make([]uint16, n)
		for i := range src {
			src[i] = uint16(0x3f80 + 37*i)
		}
		dst := make([]float32, n+1)
		dst[n] = 42
		ConvertBF16(dst, src)
		for i := range src {
			if dst[i] != BF16ToFloat32(src[i]) {
				t.Fatalf("n=%d ConvertBF16[%d] = %v", n, i, dst[i])
			}
		}
		if dst[n] != 42 {
			t.Fatal("ConvertBF16 wrote past len(src)")
		}
	}
}

func TestMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, s := range append(matShapes, shape{5, 300, 400}, shape{70, 70, 200}) {
		for _, acc := range []bool{false, true} {
			a := randSlice(r, s.m*s.k)
			b := randSlice(r, s.k*s.n)
			dst := randSlice(r, s.m*s.n)
			want := make([]float64, s.m*s.n)
			for i := 0; i < s.m; i++ {
				for j := 0; j < s.n; j++ {
					var v float64
					for l := 0; l < s.k; l++ {
						v += float64(a[i*s.k+l]) * float64(b[l*s.n+j])
					}
					if acc {
						v += float64(dst[i*s.n+j])
					}
					want[i*s.n+j] = v
				}
			}
			MatMul(dst, a, b, s.m, s.k, s.n, acc)
			checkClose(t, fmt.Sprintf("MatMul %v acc=%v", s, acc), dst, want, 4*math.Sqrt(float64(s.k))+1)
		}
	}
}

func TestParallelFor(t *testing.T) {
	withThreads(t, func(t *testing.T, c *CPU) {
		for _, n := range []int{0, 1, 2, 3, 5, 64, 1001} {
			hits := make([]int32, n)
			var chunks atomic.Int32
			c.ParallelFor(n, func(lo, hi int) {
				chunks.Add(1)
				if lo >= hi {
					t.Errorf("empty chunk [%d,%d)", lo, hi)
				}
				for i := lo; i < hi; i++ {
					atomic.AddInt32(&hits[i], 1)
				}
			})
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("n=%d: index %d visited %d times", n, i, h)
				}
			}
			if got := int(chunks.Load()); got > c.Threads() || (n > 0 && got != min(n, c.Threads())) {
				t.Fatalf("n=%d: %d chunks with %d threads", n, got, c.Threads())
			}
		}
	})
}

func TestReentrantUsePanics(t *testing.T) {
	c := NewCPU(2)
	defer c.Close()
	var got any
	c.ParallelFor(2, func(lo, hi int) {
		if lo == 0 { // chunk 0 runs on the caller: a panic there is recoverable
			func() {
				defer func() { got = recover() }()
				c.ParallelFor(4, func(int, int) {})
			}()
		}
	})
	if got == nil || !strings.Contains(fmt.Sprint(got), "re-entrantly") {
		t.Fatalf("nested ParallelFor: recover() = %v", got)
	}
	// The CPU is still usable afterwards.
	n := 0
	c.ParallelFor(2, func(lo, hi int) {
		if lo == 0 {
			n = hi
		}
	})
	if n != 1 {
		t.Fatal("CPU broken after a caught re-entrant call")
	}
}

func TestPanicInCallerChunkWaitsForWorkers(t *testing.T) {
	c := NewCPU(2)
	defer c.Close()
	var workerDone atomic.Bool
	func() {
		defer func() { recover() }()
		c.ParallelFor(2, func(lo, hi int) {
			if lo == 0 {
				panic("boom")
			}
			for i := 0; i < 1000; i++ {
				runtime.Gosched()
			}
			workerDone.Store(true)
		})
	}()
	if !workerDone.Load() {
		t.Fatal("ParallelFor returned (panicking) before the worker chunk finished")
	}
}

func TestCloseStopsWorkers(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := NewCPU(4)
	dst := make([]float32, 8)
	c.MatMulT(dst, randSlice(rand.New(rand.NewPCG(1, 1)), 8), 1, 8, make([]float32, 64), 8, false)
	c.Close()
	c.Close() // idempotent
	// Still usable, single-threaded.
	forceParallel(t)
	a := []float32{1, 2}
	w := []float32{1, 0, 0, 1, 1, 1}
	c.MatMulT(dst[:3], a, 1, 2, w, 3, false)
	if dst[0] != 1 || dst[1] != 2 || dst[2] != 3 {
		t.Fatalf("after Close: %v", dst[:3])
	}
	c.ParallelFor(5, func(lo, hi int) {})
}

func TestNewCPUDefaultThreads(t *testing.T) {
	c := NewCPU(0)
	defer c.Close()
	if c.Threads() != runtime.NumCPU() {
		t.Fatalf("Threads() = %d, want NumCPU %d", c.Threads(), runtime.NumCPU())
	}
	t.Log("kernels:", Kernels())
}

func TestMatMulTNoAllocs(t *testing.T) {
	c := NewCPU(2)
	defer c.Close()
	r := rand.New(rand.NewPCG(11, 12))
	a, w := randSlice(r, 2*512), randSlice(r, 512*512)
	wb, _ := bf16Weights(r, 512*512)
	dst := make([]float32, 2*512)
	c.MatMulTBF16(dst, a, 2, 512, wb, 512, false) // grow scratch once
	allocs := testing.AllocsPerRun(20, func() {
		c.MatMulT(dst, a, 2, 512, w, 512, false)
		c.MatMulT(dst, a, 1, 512, w, 512, true)
		c.MatMulTBF16(dst, a, 2, 512, wb, 512, false)
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per run", allocs)
	}
}
