package compute

import (
	"math"
)

// The functions in this file are single-threaded, allocation-free and
// reentrant. Unless stated otherwise dst may alias an input exactly (in-place
// use), and lengths are taken from dst / x; shorter inputs panic.

// RMSNorm normalises each of rows rows of x (d values each) by its root mean
// square and scales by w: dst[r] = w * (x[r] * 1/sqrt(mean(x[r]²) + eps)).
// This follows HF's T5LayerNorm / MixtralRMSNorm in float32: the mean of
// squares is accumulated in float64 and then rounded to float32 (within 1 ulp
// of torch's float32 reduction), rsqrt of (mean+eps) is taken in float32
// precision, and the product is formed as w * (x * rsqrt) in float32.
func RMSNorm(dst, x []float32, rows, d int, w []float32, eps float32) {
	if rows < 0 || d < 0 || len(x) < rows*d || len(dst) < rows*d || len(w) < d {
		panic("compute: RMSNorm size mismatch")
	}
	w = w[:d]
	for r := 0; r < rows; r++ {
		xr := x[r*d : (r+1)*d : (r+1)*d]
		dr := dst[r*d : (r+1)*d : (r+1)*d]
		var s0, s1, s2, s3 float64
		i := 0
		for ; i+4 <= d; i += 4 {
			v := xr[i : i+4 : i+4]
			a, b, c, e := float64(v[0]), float64(v[1]), float64(v[2]), float64(v[3])
			s0 += a * a
			s1 += b * b
			s2 += c * c
			s3 += e * e
		}
		for ; i < d; i++ {
			a := float64(xr[i])
			s0 += a * a
		}
		mean := float32((s0 + s1 + s2 + s3) / float64(d))
		inv := float32(1 / math.Sqrt(float64(mean+eps)))
		for i := range dr {
			dr[i] = w[i] * (xr[i] * inv)
		}
	}
}

// Softmax replaces x by softmax(x), subtracting the max first. exp is
// evaluated in float64 and rounded; the sum is accumulated in float64.
// A slice of all -Inf yields NaNs, as in torch.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	mx := x[0]
	for _, v := range x[1:] {
		if v > mx {
			mx = v
		}
	}
	var sum float64
	for i, v := range x {
		e := float32(math.Exp(float64(v - mx)))
		x[i] = e
		sum += float64(e)
	}
	inv := 1 / sum
	for i, v := range x {
		x[i] = float32(float64(v) * inv)
	}
}

// siluSIMDMin is the length from which SiLU calls the vector kernel: below it cgo's ~50ns per call
// costs more than the vector loop saves.
const siluSIMDMin = 64

// SiLU replaces x by x*sigmoid(x) (torch.nn.functional.silu). On AVX2 or AVX-512 CPUs (the cgo
// build, at least siluSIMDMin values) a float32 vector kernel computes it within 3·2^-24
// relative error (vec_kernels.c); otherwise it is evaluated in float64 and rounded.
func SiLU(x []float32) {
	if siluSIMD(x) {
		return
	}
	for i, v := range x {
		f := float64(v)
		x[i] = float32(f / (1 + math.Exp(-f)))
	}
}

// ReLU replaces x by max(x, 0). NaN stays NaN, as in torch.
func ReLU(x []float32) {
	for i, v := range x {
		if v < 0 {
			x[i] = 0
		}
	}
}

// Mul sets dst[i] = a[i]*b[i] for i < len(dst).
func Mul(dst, a, b []float32) {
	n := len(dst)
	a, b = a[:n], b[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		d := dst[i : i+4 : i+4]
		x := a[i : i+4 : i+4]
		y := b[i : i+4 : i+4]
		d[0] = x[0] * y[0]
		d[1] = x[1] * y[1]
		d[2] = x[2] * y[2]
		d[3] = x[3] * y[3]
	}
	for ; i < n; i++ {
		dst[i] = a[i] * b[i]
	}
}

// Add sets dst[i] += a[i] for i < len(dst).
func Add(dst, a []float32) {
	n := len(dst)
	a = a[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		d := dst[i : i+4 : i+4]
		x := a[i : i+4 : i+4]
		d[0] += x[0]
		d[1] += x[1]
		d[2] += x[2]
		d[3] += x[3]
	}
	for ; i < n; i++ {
		dst[i] += a[i]
	}
}

// Scale sets x[i] *= s.
func Scale(x []float32, s float32) {
	for i := range x {
		x[i] *= s
	}
}

// Axpy sets dst[i] += alpha*x[i] for i < len(dst) (two roundings, no FMA,
// like torch's CPU add(alpha=) on non-FMA paths).
func Axpy(dst []float32, alpha float32, x []float32) {
	n := len(dst)
	x = x[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		d := dst[i : i+4 : i+4]
		v := x[i : i+4 : i+4]
		d[0] += alpha * v[0]
		d[1] += alpha * v[1]
		d[2] += alpha * v[2]
		d[3] += alpha * v[3]
	}
	for ; i < n; i++ {
		dst[i] += alpha * x[i]
	}
}

// Dot returns sum(a[i]*b[i]) for i < len(a), with 8 float32 partial sums
// (8-way unrolled). len(b) must be >= len(a).
func Dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= n; i += 8 {
		x := a[i : i+8 : i+8]
		y := b[i : i+8 : i+8]
		s0 += x[0] * y[0]
		s1 += x[1] * y[1]
		s2 += x[2] * y[2]
		s3 += x[3] * y[3]
		s4 += x[4] * y[4]
		s5 += x[5] * y[5]
		s6 += x[6] * y[6]
		s7 += x[7] * y[7]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// ArgMax returns the index of the largest element of x (the first one on
// ties, like torch.argmax), or -1 for an empty slice. NaN compares as the
// maximum (torch treats NaN as greater than everything); the first NaN wins.
func ArgMax(x []float32) int {
	if len(x) == 0 {
		return -1
	}
	best := 0
	bv := x[0]
	if bv != bv {
		return 0
	}
	for i, v := range x[1:] {
		if v != v {
			return i + 1
		}
		if v > bv {
			best, bv = i+1, v
		}
	}
	return best
}
