// Package backendtest is the conformance suite of compute.Backend: Run checks every op of a
// backend against a float64 reference on random inputs, within tolerances derived from float32
// rounding (stated next to each check). `go test ./compute/...` runs it on the CPU backend; a GPU
// backend's tests call the same Run, so this package uses nothing but the Backend interface. Like
// testing/fstest it does not import testing (no production package does): Run takes the part of
// a *testing.T it uses.
//
// The tolerances are rigorous error bounds of float32 arithmetic, not fudge factors: with u =
// 2⁻²⁴ (float32's unit roundoff), a sum of k products in any order is within (k+2)·u·Σ|aᵢbᵢ| of
// the exact value, an op that rounds once is exact to its float64 reference rounded to float32,
// and so on. A backend that computes in lower precision (TF32 tensor cores, fast-math
// approximations beyond a few ulp) fails, by design: the engine's golden tests hold HF's float32
// numerics.
package backendtest

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/pregate/pregate/compute"
)

// u is float32's unit roundoff.
const u = 1.0 / (1 << 24)

// TB is the part of a *testing.T (or testing.TB) that Run uses.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// Run checks every op of b and reports, through t.Errorf, the first mismatch of each op (named by
// op and case). Pass the test's *testing.T.
func Run(t TB, b compute.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"Memory", testMemory},
		{"Copy", testCopy},
		{"GatherRows", testGatherRows},
		{"ScatterAddRows", testScatterAddRows},
		{"Embed", testEmbed},
		{"Linear", testLinear},
		{"RMSNorm", testRMSNorm},
		{"Softmax", testSoftmax},
		{"Activations", testActivations},
		{"Elementwise", testElementwise},
		{"RoPE", testRoPE},
		{"Attention", testAttention},
	}
	for _, tt := range tests {
		e := &env{t: t, b: b, op: tt.name, rng: rand.New(rand.NewPCG(1, uint64(len(tt.name))))}
		e.run(tt.fn)
	}
}

// env carries one op's checks: the backend, a random source, the tensors to free.
type env struct {
	t    TB
	b    compute.Backend
	op   string
	rng  *rand.Rand
	held []compute.Tensor
}

// failed is the panic with which Fatalf ends an op's checks.
type failed struct{}

// run runs fn's checks, stopping at the first failure, then syncs the backend and frees what fn
// allocated.
func (e *env) run(fn func(*env)) {
	defer func() {
		for _, x := range e.held {
			e.b.Free(x)
		}
		if r := recover(); r != nil {
			if _, ok := r.(failed); !ok {
				panic(r)
			}
		}
	}()
	fn(e)
	if err := e.b.Sync(); err != nil {
		e.Fatalf("Sync: %v", err)
	}
}

// Fatalf reports a failure of the op and ends its checks.
func (e *env) Fatalf(format string, args ...any) {
	e.t.Helper()
	e.t.Errorf("%s: %s", e.op, fmt.Sprintf(format, args...))
	panic(failed{})
}

// Fatal is Fatalf of an error.
func (e *env) Fatal(err error) { e.Fatalf("%v", err) }

// alloc returns a zeroed tensor of n elements, freed when the test ends.
func (e *env) alloc(dt compute.DType, n int) compute.Tensor {
	e.t.Helper()
	x, err := e.b.Alloc(dt, n)
	if err != nil {
		e.Fatalf("Alloc(%s, %d): %v", dt, n, err)
	}
	if x.Len() != n || x.DType() != dt {
		e.Fatalf("Alloc(%s, %d) returned %s[%d]", dt, n, x.DType(), x.Len())
	}
	e.held = append(e.held, x)
	return x
}

// put returns a tensor holding x, at an odd offset inside a larger allocation so that every op is
// also checked on views.
func (e *env) put(x []float32) compute.Tensor {
	e.t.Helper()
	const pad = 3
	whole := e.alloc(compute.F32, len(x)+2*pad)
	v := whole.View(pad, len(x))
	e.b.Upload(v, x)
	return v
}

// get downloads x.
func (e *env) get(x compute.Tensor) []float32 {
	e.t.Helper()
	out := make([]float32, x.Len())
	if err := e.b.Download(out, x); err != nil {
		e.Fatalf("Download: %v", err)
	}
	return out
}

// weight returns a [n×k] weight of random values as F32, or as BF16 (and the values it holds).
func (e *env) weight(n, k int, dt compute.DType) (compute.Tensor, []float32) {
	e.t.Helper()
	vals := e.uniform(n * k)
	if dt == compute.F32 {
		w, err := e.b.Const(vals)
		if err != nil {
			e.Fatalf("Const: %v", err)
		}
		return w, vals
	}
	bits := make([]uint16, len(vals))
	for i, v := range vals {
		bits[i] = uint16(math.Float32bits(v) >> 16)
		vals[i] = math.Float32frombits(uint32(bits[i]) << 16)
	}
	w, err := e.b.ConstBF16(bits)
	if err != nil {
		e.Fatalf("ConstBF16: %v", err)
	}
	return w, vals
}

// uniform returns n values uniform in [-1, 1).
func (e *env) uniform(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(2*e.rng.Float64() - 1)
	}
	return x
}

// check fails unless |got[i] − want[i]| ≤ tol[i] for every i (tol nil: exact equality).
func (e *env) check(what string, got []float32, want []float64, tol []float64) {
	e.t.Helper()
	if len(got) != len(want) {
		e.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := float64(got[i]), want[i]
		if math.IsNaN(w) && math.IsNaN(g) {
			continue
		}
		var bound float64
		if tol != nil {
			bound = tol[i]
		} else {
			w = float64(float32(w)) // an op that rounds once equals its reference rounded
		}
		if !(math.Abs(g-w) <= bound) {
			e.Fatalf("%s: element %d is %v, want %v (tolerance %.3g)", what, i, g, w, bound)
		}
	}
}

func testMemory(e *env) {
	for _, dt := range []compute.DType{compute.F32, compute.BF16} {
		if x := e.alloc(dt, 37); x.Bytes() != int64(37*dt.Size()) {
			e.Fatalf("%s[37] is %d bytes", dt, x.Bytes())
		}
	}
	z := e.get(e.alloc(compute.F32, 1000))
	for i, v := range z {
		if v != 0 {
			e.Fatalf("Alloc is not zeroed: element %d is %v", i, v)
		}
	}
	x := e.uniform(1001)
	got := e.get(e.put(x))
	e.check("Upload then Download", got, widen(x), nil)
	// Const of F32 data downloads as itself.
	c, err := e.b.Const(x)
	if err != nil {
		e.Fatal(err)
	}
	e.check("Const", e.get(c.View(5, 100)), widen(x[5:105]), nil)
}

func testCopy(e *env) {
	x := e.uniform(515)
	dst := e.put(make([]float32, 600))
	e.b.Copy(dst.View(40, 515), e.put(x))
	want := make([]float64, 600)
	for i, v := range x {
		want[40+i] = float64(v)
	}
	e.check("Copy", e.get(dst), want, nil)
	// BF16: copy a weight's rows into a fresh tensor and use them as a weight (bits preserved).
	w, vals := e.weight(6, 9, compute.BF16)
	w2 := e.alloc(compute.BF16, 4*9)
	e.b.Copy(w2, w.Rows(2, 6, 9))
	out := e.put(make([]float32, 4*9))
	e.b.Embed(out, w2, []int{0, 1, 2, 3}, 9)
	e.check("Copy BF16", e.get(out), widen(vals[2*9:]), nil)
}

func testGatherRows(e *env) {
	for _, d := range []int{1, 7, 64} {
		src := e.uniform(9 * d)
		rows := []int{8, 0, 3, 3, 5}
		dst := e.put(make([]float32, len(rows)*d))
		e.b.GatherRows(dst, e.put(src), rows, d)
		var want []float64
		for _, r := range rows {
			want = append(want, widen(src[r*d:(r+1)*d])...)
		}
		e.check(fmt.Sprintf("GatherRows d=%d", d), e.get(dst), want, nil)
	}
}

func testScatterAddRows(e *env) {
	for _, d := range []int{1, 13, 96} {
		base := e.uniform(6 * d)
		src := e.uniform(4 * d)
		rows := []int{5, 1, 5, 0} // a row may repeat (top-k > 1 sends a token to several experts)
		weights := []float32{0.25, 0.7, -1.5, 1}
		dst := e.put(base)
		e.b.ScatterAddRows(dst, e.put(src), rows, weights, d)
		// Each update rounds the product, then the sum: two roundings, so within 2u of each term
		// per update (the reference is exact; updates to a row compound).
		want, tol := widen(base), make([]float64, len(base))
		for i, r := range rows {
			for j := range d {
				p := float64(weights[i]) * float64(src[i*d+j])
				want[r*d+j] += p
				tol[r*d+j] += 2 * u * (math.Abs(want[r*d+j]) + math.Abs(p))
			}
		}
		e.check(fmt.Sprintf("ScatterAddRows d=%d", d), e.get(dst), want, tol)
	}
}

func testEmbed(e *env) {
	for _, dt := range []compute.DType{compute.F32, compute.BF16} {
		for _, d := range []int{1, 5, 48} {
			table, vals := e.weight(11, d, dt)
			ids := []int{10, 0, 4, 4, 7}
			dst := e.put(make([]float32, len(ids)*d))
			e.b.Embed(dst, table, ids, d)
			var want []float64
			for _, id := range ids {
				want = append(want, widen(vals[id*d:(id+1)*d])...)
			}
			// BF16 widens exactly.
			e.check(fmt.Sprintf("Embed %s d=%d", dt, d), e.get(dst), want, nil)
		}
	}
}

// linearShapes are decode GEMVs (m = 1), small batches and prefills (m > 4), with odd sizes,
// a router-like n = 8, and products large enough for a backend to split them.
var linearShapes = [][3]int{ // m, k, n
	{1, 1, 1}, {1, 7, 5}, {1, 64, 33}, {1, 257, 130}, {1, 768, 512},
	{2, 33, 8}, {3, 17, 9}, {4, 128, 64},
	{5, 33, 31}, {7, 64, 8}, {9, 128, 70}, {16, 96, 300}, {33, 250, 65},
}

func testLinear(e *env) {
	for _, dt := range []compute.DType{compute.F32, compute.BF16} {
		for _, s := range linearShapes {
			m, k, n := s[0], s[1], s[2]
			for _, acc := range []bool{false, true} {
				x := e.uniform(m * k)
				w, wv := e.weight(n, k, dt)
				base := e.uniform(m * n)
				dst := e.put(base)
				e.b.Linear(dst, e.put(x), m, k, w, n, acc)
				// A float32 sum of k products (plus the accumulated value), in any order and with
				// or without FMA, is within (k+2)·u·Σ|terms| of the exact sum.
				want, tol := make([]float64, m*n), make([]float64, m*n)
				for i := range m {
					for j := range n {
						var sum, abs float64
						for l := range k {
							p := float64(x[i*k+l]) * float64(wv[j*k+l])
							sum += p
							abs += math.Abs(p)
						}
						if acc {
							sum += float64(base[i*n+j])
							abs += math.Abs(float64(base[i*n+j]))
						}
						want[i*n+j], tol[i*n+j] = sum, float64(k+2)*u*abs
					}
				}
				e.check(fmt.Sprintf("Linear %s m=%d k=%d n=%d accumulate=%v", dt, m, k, n, acc), e.get(dst), want, tol)
			}
		}
	}
}

func testRMSNorm(e *env) {
	for _, s := range [][2]int{{1, 1}, {1, 64}, {3, 17}, {6, 768}} {
		rows, d := s[0], s[1]
		x := e.uniform(rows * d)
		w := e.uniform(d)
		const eps = 1e-6
		xt, wt := e.put(x), e.put(w)
		dst := e.put(make([]float32, rows*d))
		e.b.RMSNorm(dst, xt, rows, d, wt, eps)
		inPlace := e.put(x)
		e.b.RMSNorm(inPlace, inPlace, rows, d, wt, eps)
		// The mean of squares (d terms) is within (d+2)·u relative even if summed in float32; the
		// rsqrt and two products add a few roundings: (d/2 + 8)·u relative to each output.
		want, tol := make([]float64, rows*d), make([]float64, rows*d)
		for r := range rows {
			var ss float64
			for _, v := range x[r*d : (r+1)*d] {
				ss += float64(v) * float64(v)
			}
			inv := 1 / math.Sqrt(ss/float64(d)+eps)
			for i := range d {
				y := float64(w[i]) * float64(x[r*d+i]) * inv
				want[r*d+i], tol[r*d+i] = y, (float64(d)/2+8)*u*math.Abs(y)
			}
		}
		name := fmt.Sprintf("RMSNorm rows=%d d=%d", rows, d)
		e.check(name, e.get(dst), want, tol)
		e.check(name+" in place", e.get(inPlace), want, tol)
	}
}

func testSoftmax(e *env) {
	for _, s := range [][2]int{{1, 1}, {1, 8}, {4, 33}, {3, 1000}} {
		rows, n := s[0], s[1]
		x := e.uniform(rows * n)
		for i := range x {
			x[i] *= 20 // spread the probabilities over orders of magnitude
		}
		xt := e.put(x)
		e.b.Softmax(xt, rows, n)
		// exp of a rounded difference: (|xᵢ − max| + 4)·u relative; the sum of n terms adds (n+2)·u.
		want, tol := make([]float64, rows*n), make([]float64, rows*n)
		for r := range rows {
			row := x[r*n : (r+1)*n]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = math.Max(mx, float64(v))
			}
			var sum float64
			for _, v := range row {
				sum += math.Exp(float64(v) - mx)
			}
			for i, v := range row {
				p := math.Exp(float64(v)-mx) / sum
				want[r*n+i], tol[r*n+i] = p, (math.Abs(float64(v)-mx)+float64(n)+8)*u*p
			}
		}
		e.check(fmt.Sprintf("Softmax rows=%d n=%d", rows, n), e.get(xt), want, tol)
	}
	// A row of all −Inf yields NaNs, as in torch.
	inf := float32(math.Inf(-1))
	xt := e.put([]float32{inf, inf, inf})
	e.b.Softmax(xt, 1, 3)
	for i, v := range e.get(xt) {
		if !math.IsNaN(float64(v)) {
			e.Fatalf("Softmax of all -Inf: element %d is %v, want NaN", i, v)
		}
	}
}

func testActivations(e *env) {
	x := e.uniform(517)
	for i := range x {
		x[i] *= 8
	}
	x[0], x[1] = 0, float32(math.NaN())
	tests := []struct {
		name string
		op   func(compute.Tensor)
		ref  func(float64) float64
		ulps float64 // 0: exact (one rounding)
	}{
		{"ReLU", e.b.ReLU, func(v float64) float64 {
			if v < 0 {
				return 0
			}
			return v
		}, 0},
		// Transcendental: a few ulp of float32 relative error (correctly rounded is 0.5).
		{"SiLU", e.b.SiLU, func(v float64) float64 { return v / (1 + math.Exp(-v)) }, 4},
		{"GELU", e.b.GELU, func(v float64) float64 {
			return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
		}, 4},
	}
	for _, tt := range tests {
		xt := e.put(x)
		tt.op(xt)
		want := make([]float64, len(x))
		var tol []float64
		if tt.ulps > 0 {
			tol = make([]float64, len(x))
		}
		for i, v := range x {
			want[i] = tt.ref(float64(v))
			if tol != nil {
				tol[i] = tt.ulps*u*math.Abs(want[i]) + 1e-38
			}
		}
		e.check(tt.name, e.get(xt), want, tol)
	}
}

func testElementwise(e *env) {
	for _, n := range []int{1, 7, 4099} {
		a, b := e.uniform(n), e.uniform(n)
		// One rounding each: exact to the reference rounded to float32.
		dst := e.put(make([]float32, n))
		at, bt := e.put(a), e.put(b)
		e.b.Mul(dst, at, bt)
		e.check("Mul", e.get(dst), zipWith(a, b, func(x, y float64) float64 { return x * y }), nil)
		e.b.Mul(at, at, bt) // in place
		e.check("Mul in place", e.get(at), zipWith(a, b, func(x, y float64) float64 { return x * y }), nil)
		st := e.put(a)
		e.b.Add(st, e.put(b))
		e.check("Add", e.get(st), zipWith(a, b, func(x, y float64) float64 { return x + y }), nil)
		sc := e.put(a)
		e.b.Scale(sc, 0.1234)
		e.check("Scale", e.get(sc), zipWith(a, a, func(x, _ float64) float64 { return x * float64(float32(0.1234)) }), nil)
	}
}

func testRoPE(e *env) {
	for _, s := range [][3]int{{1, 1, 2}, {1, 4, 16}, {5, 3, 8}, {7, 2, 64}} {
		tokens, heads, hd := s[0], s[1], s[2]
		half := hd / 2
		x := e.uniform(tokens * heads * hd)
		cos, sin := make([]float32, tokens*half), make([]float32, tokens*half)
		for i := range cos {
			a := 10 * e.rng.Float64()
			cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
		}
		xt := e.put(x)
		e.b.RoPE(xt, tokens, heads, hd, e.put(cos), e.put(sin))
		// Two products and a sum: within 2u·(|x₁c| + |x₂s|) (with or without FMA).
		want, tol := make([]float64, len(x)), make([]float64, len(x))
		for t := range tokens {
			for h := range heads {
				o := (t*heads + h) * hd
				for i := range half {
					c, s := float64(cos[t*half+i]), float64(sin[t*half+i])
					x1, x2 := float64(x[o+i]), float64(x[o+i+half])
					want[o+i] = x1*c - x2*s
					want[o+i+half] = x2*c + x1*s
					tol[o+i] = 2 * u * (math.Abs(x1*c) + math.Abs(x2*s))
					tol[o+i+half] = 2 * u * (math.Abs(x2*c) + math.Abs(x1*s))
				}
			}
		}
		e.check(fmt.Sprintf("RoPE tokens=%d heads=%d hd=%d", tokens, heads, hd), e.get(xt), want, tol)
	}
}

// attentionCase is one attention call: the shapes and options of compute.Attention, and which of
// the optional inputs to give it.
type attentionCase struct {
	name                    string
	heads, kvHeads, headDim int
	nq, nk                  int
	scale                   float32
	causal                  bool
	past, window            int
	biasReach               int   // > 0: a relative bias table of this reach
	masked                  []int // keys masked out
}

var attentionCases = []attentionCase{
	{name: "T5 encoder, bias and padding", heads: 4, kvHeads: 4, headDim: 8, nq: 7, nk: 7, scale: 1, biasReach: 3, masked: []int{5, 6}},
	{name: "T5 decoder self, causal with past", heads: 3, kvHeads: 3, headDim: 16, nq: 3, nk: 8, scale: 1, causal: true, past: 5, biasReach: 4},
	{name: "T5 decoder decode, reach beyond keys", heads: 2, kvHeads: 2, headDim: 8, nq: 1, nk: 4, scale: 1, causal: true, past: 3, biasReach: 16},
	{name: "T5 cross, padding", heads: 4, kvHeads: 4, headDim: 8, nq: 2, nk: 6, scale: 1, masked: []int{0}},
	{name: "Mixtral prefill GQA", heads: 8, kvHeads: 2, headDim: 16, nq: 9, nk: 9, scale: 0.25, causal: true},
	{name: "Mixtral GQA with past", heads: 8, kvHeads: 2, headDim: 16, nq: 5, nk: 9, scale: 0.25, causal: true, past: 4},
	{name: "sliding window prefill", heads: 4, kvHeads: 2, headDim: 8, nq: 10, nk: 10, scale: 0.35, causal: true, window: 3},
	{name: "sliding window decode", heads: 4, kvHeads: 1, headDim: 8, nq: 1, nk: 13, scale: 0.35, causal: true, past: 12, window: 5},
	{name: "odd head dim", heads: 3, kvHeads: 1, headDim: 5, nq: 4, nk: 6, scale: 0.5, causal: true, past: 2},
	{name: "long keys", heads: 2, kvHeads: 2, headDim: 64, nq: 2, nk: 300, scale: 0.125, causal: true, past: 298},
}

func testAttention(e *env) {
	for _, c := range attentionCases {
		qd, kd := c.heads*c.headDim, c.kvHeads*c.headDim
		q, k, v := e.uniform(c.nq*qd), e.uniform(c.nk*kd), e.uniform(c.nk*kd)
		for i := range q {
			q[i] *= 2
		}
		a := compute.Attention{Heads: c.heads, KVHeads: c.kvHeads, HeadDim: c.headDim, Scale: c.scale,
			Causal: c.causal, Past: c.past, Window: c.window, BiasReach: c.biasReach}
		var bias, mask []float32
		if c.biasReach > 0 {
			bias = e.uniform((2*c.biasReach + 1) * c.heads)
			a.Bias = e.put(bias)
		}
		if c.masked != nil {
			mask = make([]float32, c.nk)
			for _, j := range c.masked {
				mask[j] = compute.MaskValue
			}
			a.Mask = e.put(mask)
		}
		// The output rows of several sequences share a tensor: write this one's at an offset.
		whole := e.put(make([]float32, (c.nq+2)*qd))
		out := whole.Rows(1, 1+c.nq, qd)
		e.b.Attention(out, e.put(q), e.put(k), e.put(v), c.nq, c.nk, &a)

		// Tolerance: a score is a dot of headDim terms, within (headDim+2)·u·S, S = Σ|q·k|·scale +
		// |bias|; a probability then errs by at most 2·(that) + (keys+8)·u relative, and the output,
		// a sum over keys, adds (keys+2)·u: all relative to Σ p·|v|.
		want, tol := make([]float64, c.nq*qd), make([]float64, c.nq*qd)
		group := c.heads / c.kvHeads
		for i := range c.nq {
			qp := c.past + i
			for h := range c.heads {
				kh := h / group
				first, last := 0, c.nk
				if c.causal {
					last = min(c.nk, qp+1)
					if c.window > 0 {
						first = max(0, qp-c.window+1)
					}
				}
				scores := make([]float64, last-first)
				var sMax float64
				for j := first; j < last; j++ {
					var dot, abs float64
					for l := range c.headDim {
						p := float64(q[i*qd+h*c.headDim+l]) * float64(k[j*kd+kh*c.headDim+l])
						dot += p
						abs += math.Abs(p)
					}
					s := dot * float64(c.scale)
					abs *= float64(c.scale)
					if bias != nil {
						rel := min(max(j-qp, -c.biasReach), c.biasReach)
						b := float64(bias[(rel+c.biasReach)*c.heads+h])
						s += b
						abs += math.Abs(b)
					}
					if mask != nil {
						s += float64(mask[j])
					}
					scores[j-first] = s
					if mask == nil || mask[j] == 0 {
						sMax = math.Max(sMax, abs)
					}
				}
				probs := softmax64(scores)
				keys := float64(last - first)
				rel := 2*(float64(c.headDim)+2)*u*sMax + (2*keys+16)*u
				for l := range c.headDim {
					var o, abs float64
					for j := first; j < last; j++ {
						vv := float64(v[j*kd+kh*c.headDim+l])
						o += probs[j-first] * vv
						abs += probs[j-first] * math.Abs(vv)
					}
					want[i*qd+h*c.headDim+l] = o
					tol[i*qd+h*c.headDim+l] = rel*abs + 1e-30
				}
			}
		}
		e.check("Attention "+c.name, e.get(out), want, tol)
		// The rows around the output are untouched.
		for _, r := range []int{0, c.nq + 1} {
			for i, x := range e.get(whole.Rows(r, r+1, qd)) {
				if x != 0 {
					e.Fatalf("Attention %s wrote outside its output: row %d element %d is %v", c.name, r, i, x)
				}
			}
		}
	}
}

func softmax64(s []float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range s {
		mx = math.Max(mx, v)
	}
	p := make([]float64, len(s))
	var sum float64
	for i, v := range s {
		p[i] = math.Exp(v - mx)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

func widen(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func zipWith(a, b []float32, f func(x, y float64) float64) []float64 {
	y := make([]float64, len(a))
	for i := range a {
		y[i] = f(float64(a[i]), float64(b[i]))
	}
	return y
}
