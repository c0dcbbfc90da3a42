package compute

import (
	"fmt"
	"math"
	"sync"
)

// The CPU device as a Backend: its tensors are host slices (hostMem), its ops are the kernels of
// this package run before each method returns, and nothing fails once the arguments are valid.

// hostMem is the CPU backend's memory: a host slice of either dtype.
type hostMem struct {
	f32  []float32
	bf16 []uint16
	// alloc: made by Alloc, so Free may recycle it (never a Const's view of a checkpoint).
	// freed: in the free list (a second Free is ignored).
	alloc, freed bool
}

// freeList keeps the host tensors the engine frees, by dtype and length, for its next Alloc of
// the same shape: a decode step allocates the same few dozen activations every step, and reusing
// them spares the garbage collector their slices and headers. At most maxFreeBytes are kept.
type freeList struct {
	mu    sync.Mutex
	byLen map[freeKey][]*hostMem
	bytes int64
}

type freeKey struct {
	dt DType
	n  int
}

// maxFreeBytes bounds the memory a CPU keeps in its free list: a step's activations (a few MB
// for a long prefill), not the KV caches of every sequence that ever ended.
const maxFreeBytes = 64 << 20

func (f *freeList) get(dt DType, n int) *hostMem {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := freeKey{dt, n}
	ms := f.byLen[k]
	if len(ms) == 0 {
		return nil
	}
	m := ms[len(ms)-1]
	f.byLen[k] = ms[:len(ms)-1]
	f.bytes -= m.Bytes()
	m.freed = false
	return m
}

func (f *freeList) put(dt DType, m *hostMem) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.freed || f.bytes+m.Bytes() > maxFreeBytes {
		return
	}
	if f.byLen == nil {
		f.byLen = map[freeKey][]*hostMem{}
	}
	k := freeKey{dt, int(m.Bytes()) / dt.Size()}
	f.byLen[k] = append(f.byLen[k], m)
	f.bytes += m.Bytes()
	m.freed = true
}

func (m *hostMem) Bytes() int64 { return int64(len(m.f32))*4 + int64(len(m.bf16))*2 }

// HostTensor returns a tensor that is x itself (no copy): what the CPU backend computes on. The
// worker's CPU device hands out its expert buffers this way. Only host-addressable backends (the
// CPU) can compute on it.
func HostTensor(x []float32) Tensor { return Tensor{mem: &hostMem{f32: x}, n: len(x), dt: F32} }

// HostTensorBF16 is HostTensor for bfloat16 data (raw bits).
func HostTensorBF16(x []uint16) Tensor {
	return Tensor{mem: &hostMem{bf16: x}, n: len(x), dt: BF16}
}

// hostF32 returns the float32 elements of a CPU tensor.
func hostF32(t Tensor) []float32 {
	m, ok := t.mem.(*hostMem)
	if !ok || t.dt != F32 {
		panic(fmt.Sprintf("compute: the CPU backend wants an F32 host tensor, got %s", describe(t)))
	}
	return m.f32[t.off : t.off+t.n : t.off+t.n]
}

// hostBF16 returns the bfloat16 elements of a CPU tensor.
func hostBF16(t Tensor) []uint16 {
	m, ok := t.mem.(*hostMem)
	if !ok || t.dt != BF16 {
		panic(fmt.Sprintf("compute: the CPU backend wants a BF16 host tensor, got %s", describe(t)))
	}
	return m.bf16[t.off : t.off+t.n : t.off+t.n]
}

func describe(t Tensor) string {
	if t.mem == nil {
		return "the zero tensor"
	}
	return fmt.Sprintf("%s[%d] in %T", t.dt, t.n, t.mem)
}

// checkLen panics unless t has at least n elements.
func checkLen(op string, t Tensor, n int) {
	if t.n < n {
		panic(fmt.Sprintf("compute: %s wants %d elements, the tensor has %d", op, n, t.n))
	}
}

var _ Backend = (*CPU)(nil)

// Name implements Backend.
func (c *CPU) Name() string { return "cpu" }

// Alloc implements Backend: a tensor from the free list, cleared, or a new one.
func (c *CPU) Alloc(dt DType, n int) (Tensor, error) {
	if n < 0 {
		return Tensor{}, fmt.Errorf("compute: alloc of %d elements", n)
	}
	if dt != F32 && dt != BF16 {
		return Tensor{}, fmt.Errorf("compute: alloc of %s", dt)
	}
	m := c.free.get(dt, n)
	switch {
	case m == nil && dt == F32:
		m = &hostMem{f32: make([]float32, n), alloc: true}
	case m == nil:
		m = &hostMem{bf16: make([]uint16, n), alloc: true}
	default:
		clear(m.f32)
		clear(m.bf16)
	}
	return Tensor{mem: m, n: n, dt: dt}, nil
}

// Free implements Backend: a whole tensor from Alloc goes to the free list (the garbage collector
// reclaims it if the list is full); anything else is left to the garbage collector.
func (c *CPU) Free(t Tensor) {
	m, ok := t.mem.(*hostMem)
	if !ok || !m.alloc || t.off != 0 || int64(t.n)*int64(t.dt.Size()) != m.Bytes() {
		return
	}
	c.free.put(t.dt, m)
}

// Const implements Backend: the tensor is host itself.
func (c *CPU) Const(host []float32) (Tensor, error) { return HostTensor(host), nil }

// ConstBF16 implements Backend: the tensor is host itself.
func (c *CPU) ConstBF16(host []uint16) (Tensor, error) { return HostTensorBF16(host), nil }

// Upload implements Backend.
func (c *CPU) Upload(dst Tensor, src []float32) {
	d := hostF32(dst)
	if len(src) != len(d) {
		panic(fmt.Sprintf("compute: upload of %d elements into %d", len(src), len(d)))
	}
	copy(d, src)
}

// Download implements Backend.
func (c *CPU) Download(dst []float32, src Tensor) error {
	s := hostF32(src)
	if len(dst) != len(s) {
		panic(fmt.Sprintf("compute: download of %d elements into %d", len(s), len(dst)))
	}
	copy(dst, s)
	return nil
}

// Sync implements Backend: every op has completed when it returns.
func (c *CPU) Sync() error { return nil }

// Copy implements Backend.
func (c *CPU) Copy(dst, src Tensor) {
	if dst.dt != src.dt || dst.n != src.n {
		panic(fmt.Sprintf("compute: copy of %s into %s", describe(src), describe(dst)))
	}
	if src.dt == BF16 {
		copy(hostBF16(dst), hostBF16(src))
		return
	}
	copy(hostF32(dst), hostF32(src))
}

// GatherRows implements Backend.
func (c *CPU) GatherRows(dst, src Tensor, rows []int, d int) {
	checkLen("GatherRows", dst, len(rows)*d)
	dd, s := hostF32(dst), hostF32(src)
	for i, r := range rows {
		copy(dd[i*d:(i+1)*d], s[r*d:(r+1)*d])
	}
}

// ScatterAddRows implements Backend.
func (c *CPU) ScatterAddRows(dst, src Tensor, rows []int, weights []float32, d int) {
	checkLen("ScatterAddRows", src, len(rows)*d)
	if len(weights) != len(rows) {
		panic(fmt.Sprintf("compute: ScatterAddRows with %d rows and %d weights", len(rows), len(weights)))
	}
	dd, s := hostF32(dst), hostF32(src)
	for i, r := range rows {
		w := weights[i]
		out, in := dd[r*d:(r+1)*d:(r+1)*d], s[i*d:(i+1)*d:(i+1)*d]
		for j, v := range in {
			out[j] += float32(w * v)
		}
	}
}

// Embed implements Backend.
func (c *CPU) Embed(dst, table Tensor, ids []int, d int) {
	dd := hostF32(dst)
	checkLen("Embed", dst, len(ids)*d)
	if table.dt == BF16 {
		tb := hostBF16(table)
		for i, id := range ids {
			row := dd[i*d : (i+1)*d]
			for j, b := range tb[id*d : (id+1)*d] {
				row[j] = BF16ToFloat32(b)
			}
		}
		return
	}
	tf := hostF32(table)
	for i, id := range ids {
		copy(dd[i*d:(i+1)*d], tf[id*d:(id+1)*d])
	}
}

// Linear implements Backend with MatMulT, or MatMulTBF16 for BF16 weights.
func (c *CPU) Linear(dst, x Tensor, m, k int, w Tensor, n int, accumulate bool) {
	checkLen("Linear", dst, m*n)
	checkLen("Linear", x, m*k)
	d, a := hostF32(dst)[:m*n], hostF32(x)[:m*k]
	if w.dt == BF16 {
		c.MatMulTBF16(d, a, m, k, hostBF16(w), n, accumulate)
		return
	}
	c.MatMulT(d, a, m, k, hostF32(w), n, accumulate)
}

// RMSNorm implements Backend.
func (c *CPU) RMSNorm(dst, x Tensor, rows, d int, w Tensor, eps float32) {
	RMSNorm(hostF32(dst), hostF32(x), rows, d, hostF32(w), eps)
}

// Softmax implements Backend.
func (c *CPU) Softmax(x Tensor, rows, n int) {
	checkLen("Softmax", x, rows*n)
	v := hostF32(x)
	for r := range rows {
		Softmax(v[r*n : (r+1)*n])
	}
}

// ReLU implements Backend.
func (c *CPU) ReLU(x Tensor) { ReLU(hostF32(x)) }

// GELU implements Backend.
func (c *CPU) GELU(x Tensor) { GELU(hostF32(x)) }

// SiLU implements Backend.
func (c *CPU) SiLU(x Tensor) { SiLU(hostF32(x)) }

// Mul implements Backend.
func (c *CPU) Mul(dst, a, b Tensor) {
	checkLen("Mul", a, dst.n)
	checkLen("Mul", b, dst.n)
	Mul(hostF32(dst), hostF32(a), hostF32(b))
}

// Add implements Backend.
func (c *CPU) Add(dst, a Tensor) {
	checkLen("Add", a, dst.n)
	Add(hostF32(dst), hostF32(a))
}

// Scale implements Backend.
func (c *CPU) Scale(x Tensor, s float32) { Scale(hostF32(x), s) }

// RoPE implements Backend.
func (c *CPU) RoPE(x Tensor, tokens, heads, headDim int, cos, sin Tensor) {
	checkLen("RoPE", x, tokens*heads*headDim)
	checkLen("RoPE", cos, tokens*headDim/2)
	checkLen("RoPE", sin, tokens*headDim/2)
	RoPE(hostF32(x), hostF32(cos), hostF32(sin), tokens, heads, headDim)
}

// Attention implements Backend: one job per (head, query), spread over the CPU's threads.
func (c *CPU) Attention(out, q, k, v Tensor, nq, nk int, a *Attention) {
	qd, kd, hd := a.Heads*a.HeadDim, a.KVHeads*a.HeadDim, a.HeadDim
	checkLen("Attention", out, nq*qd)
	checkLen("Attention", q, nq*qd)
	checkLen("Attention", k, nk*kd)
	checkLen("Attention", v, nk*kd)
	if a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 {
		panic(fmt.Sprintf("compute: attention with %d heads over %d KV heads", a.Heads, a.KVHeads))
	}
	o, qs, ks, vs := hostF32(out), hostF32(q), hostF32(k), hostF32(v)
	var bias, mask []float32
	if !a.Bias.IsZero() {
		checkLen("Attention bias", a.Bias, (2*a.BiasReach+1)*a.Heads)
		bias = hostF32(a.Bias)
	}
	if !a.Mask.IsZero() {
		checkLen("Attention mask", a.Mask, nk)
		mask = hostF32(a.Mask)
	}
	group := a.Heads / a.KVHeads
	reach, heads := a.BiasReach, a.Heads
	c.ParallelFor(a.Heads*nq, func(lo, hi int) {
		scores := make([]float32, nk)
		for job := lo; job < hi; job++ {
			h, i := job/nq, job%nq
			kh := h / group
			qp := a.Past + i
			qi := qs[i*qd+h*hd : i*qd+(h+1)*hd]
			first, keys := 0, nk
			if a.Causal {
				keys = min(nk, qp+1)
				if a.Window > 0 {
					first = max(0, qp-a.Window+1)
				}
			}
			s := scores[:keys-first]
			// Rows first..keys-1 of this KV head, kd floats apart.
			kr, vr := ks[first*kd+kh*hd:], vs[first*kd+kh*hd:]
			if !dotsSIMD(s, qi, kr, kd, a.Scale) {
				for j := range s {
					s[j] = Dot(qi, kr[j*kd:j*kd+hd]) * a.Scale
				}
			}
			if bias != nil || mask != nil {
				for j := first; j < keys; j++ {
					var add float32
					if bias != nil {
						add = bias[(min(max(j-qp, -reach), reach)+reach)*heads+h]
					}
					if mask != nil {
						add += mask[j]
					}
					s[j-first] += add
				}
			}
			Softmax(s)
			oi := o[i*qd+h*hd : i*qd+(h+1)*hd]
			clear(oi)
			if !wsumSIMD(oi, s, vr, kd) {
				for j, p := range s {
					Axpy(oi, p, vr[j*kd:j*kd+hd])
				}
			}
		}
	})
}

// GELU replaces x by 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (HF's gelu_new), evaluated in
// float64 and rounded.
func GELU(x []float32) {
	const c = 0.7978845608028654 // √(2/π)
	for i, v := range x {
		f := float64(v)
		x[i] = float32(0.5 * f * (1 + math.Tanh(c*(f+0.044715*f*f*f))))
	}
}

// RoPE rotates each head of x [tokens × heads·hd] in place by the angles whose cosines and sines
// are cos, sin [tokens × hd/2] (HF rotate_half convention), in float32.
func RoPE(x, cos, sin []float32, tokens, heads, hd int) {
	half := hd / 2
	for t := range tokens {
		c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
		for h := range heads {
			v := x[(t*heads+h)*hd : (t*heads+h+1)*hd]
			for i := range half {
				x1, x2 := v[i], v[i+half]
				v[i] = x1*c[i] - x2*s[i]
				v[i+half] = x2*c[i] + x1*s[i]
			}
		}
	}
}
