package compute

import (
	"math"
	"math/rand/v2"
	"testing"
)

func relClose(got float32, want float64, tol float64) bool {
	return math.Abs(float64(got)-want) <= tol*math.Max(1, math.Abs(want))
}

func TestRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, d := range []int{1, 3, 4, 7, 64, 768} {
		rows := 3
		x := randSlice(r, rows*d)
		w := randSlice(r, d)
		eps := float32(1e-6)
		dst := make([]float32, rows*d)
		RMSNorm(dst, x, rows, d, w, eps)
		for i := 0; i < rows; i++ {
			var ss float64
			for j := 0; j < d; j++ {
				ss += float64(x[i*d+j]) * float64(x[i*d+j])
			}
			inv := 1 / math.Sqrt(ss/float64(d)+float64(eps))
			for j := 0; j < d; j++ {
				want := float64(w[j]) * float64(x[i*d+j]) * inv
				if !relClose(dst[i*d+j], want, 1e-6) {
					t.Fatalf("d=%d [%d,%d]: got %v want %v", d, i, j, dst[i*d+j], want)
				}
			}
		}
		// In place gives the same result.
		RMSNorm(x, x, rows, d, w, eps)
		for i := range x {
			if x[i] != dst[i] {
				t.Fatalf("in-place RMSNorm differs at %d", i)
			}
		}
	}
}

func TestSoftmax(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, n := range []int{1, 2, 8, 100} {
		x := randSlice(r, n)
		for i := range x {
			x[i] *= 10
		}
		x[0] = 1000 // max subtraction keeps exp finite
		want := make([]float64, n)
		mx := math.Inf(-1)
		for _, v := range x {
			mx = math.Max(mx, float64(v))
		}
		var s float64
		for i, v := range x {
			want[i] = math.Exp(float64(v) - mx)
			s += want[i]
		}
		Softmax(x)
		var sum float64
		for i := range x {
			if !relClose(x[i], want[i]/s, 1e-6) {
				t.Fatalf("n=%d [%d]: got %v want %v", n, i, x[i], want[i]/s)
			}
			sum += float64(x[i])
		}
		if math.Abs(sum-1) > 1e-5 {
			t.Fatalf("sum %v", sum)
		}
	}
	Softmax(nil)
}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{0, 1, 5, 8, 33} {
		a, b := randSlice(r, n), randSlice(r, n)

		x := append([]float32(nil), a...)
		SiLU(x)
		for i, v := range a {
			want := float64(v) / (1 + math.Exp(-float64(v)))
			if !relClose(x[i], want, 1e-6) {
				t.Fatalf("SiLU(%v) = %v want %v", v, x[i], want)
			}
		}

		x = append(x[:0], a...)
		ReLU(x)
		for i, v := range a {
			if x[i] != max(v, 0) {
				t.Fatalf("ReLU(%v) = %v", v, x[i])
			}
		}

		d := make([]float32, n)
		Mul(d, a, b)
		for i := range d {
			if d[i] != a[i]*b[i] {
				t.Fatal("Mul")
			}
		}

		x = append(x[:0], a...)
		Add(x, b)
		for i := range x {
			if x[i] != a[i]+b[i] {
				t.Fatal("Add")
			}
		}

		x = append(x[:0], a...)
		Scale(x, 3)
		for i := range x {
			if x[i] != a[i]*3 {
				t.Fatal("Scale")
			}
		}

		x = append(x[:0], a...)
		Axpy(x, -0.5, b)
		for i := range x {
			if x[i] != a[i]+(-0.5*b[i]) {
				t.Fatal("Axpy")
			}
		}

		var want float64
		for i := range a {
			want += float64(a[i]) * float64(b[i])
		}
		if got := Dot(a, b); math.Abs(float64(got)-want) > 1e-5*(math.Sqrt(float64(n))+1) {
			t.Fatalf("Dot n=%d = %v want %v", n, got, want)
		}
	}
	if v := float32(math.Inf(-1)); SiLUOf(v) != 0 && !math.IsNaN(float64(SiLUOf(v))) {
		t.Fatalf("SiLU(-Inf) = %v", SiLUOf(v))
	}
}

func SiLUOf(v float32) float32 {
	x := []float32{v}
	SiLU(x)
	return x[0]
}

func TestArgMax(t *testing.T) {
	nan := float32(math.NaN())
	for _, c := range []struct {
		x    []float32
		want int
	}{
		{nil, -1}, {[]float32{3}, 0}, {[]float32{1, 5, 5, 2}, 1}, {[]float32{-3, -1, -2}, 1},
		{[]float32{1, nan, 9, nan}, 1}, {[]float32{float32(math.Inf(-1)), float32(math.Inf(-1))}, 0},
	} {
		if got := ArgMax(c.x); got != c.want {
			t.Errorf("ArgMax(%v) = %d want %d", c.x, got, c.want)
		}
	}
}
