package compute

import (
	"fmt"
	"math"
)

// Backend is what a forward pass computes with: the engine issues every op of a model's layers
// through it, over Tensors that live in the backend's memory. The CPU device (*CPU) is one; a GPU
// is another (the cuda package, built with -tags cuda).
//
// The interface follows a GPU's model so that a CUDA backend is a kernel launch per op:
//
//   - Ops are enqueued, in order, on one stream and return nothing: a backend may run them later.
//     Failures (a kernel that did not launch, an out-of-memory copy) are sticky and surface at the
//     next Sync or Download, which wait for everything enqueued before them. The CPU backend runs
//     each op before returning and never fails once its arguments are valid.
//   - A Tensor is an opaque range of elements in the backend's memory. The host touches it only
//     through Upload and Download (and Const, which makes a weight of host data); ops never read a
//     Tensor's memory on the host.
//   - Small host arguments of an op (token ids, row indexes, per-row weights) are read before the
//     op returns, so the caller may reuse them at once (a device backend copies them).
//   - Shapes are explicit arguments (rows, columns, heads) and tensors are flat and row-major, so
//     that a view of some rows (Tensor.View, Tensor.Rows) is just an element offset: the engine
//     packs the tokens of several sequences into one activation matrix and slices it per sequence.
//   - Activations are float32; weights are float32 or bfloat16 (BF16 stays 16-bit in memory and
//     is widened inside the op, which accumulates in float32).
//
// A size mismatch between the shapes and the tensors' lengths is a bug in the caller, and panics
// (on the host, before anything is enqueued).
//
// Concurrency: one goroutine at a time issues ops (the engine is single-threaded per model).
type Backend interface {
	// Name says what the backend is ("cpu", "cuda:0 NVIDIA H200").
	Name() string

	// Alloc returns a zeroed tensor of n elements of dt (activations, scratch, KV caches).
	Alloc(dt DType, n int) (Tensor, error)
	// Free returns a tensor from Alloc or Const (whole, not a view) to the backend; ops already
	// enqueued on it still see its contents (a device backend frees in stream order). Its views
	// must not be used afterwards. Freeing the zero Tensor does nothing.
	Free(t Tensor)
	// Const makes a tensor of host's contents for the model's lifetime (dense weights, norm
	// vectors, position tables): uploaded once by a device backend, viewed in place without a
	// copy by the CPU backend (host must then outlive the tensor and never change).
	Const(host []float32) (Tensor, error)
	// ConstBF16 is Const for bfloat16 weights (raw bits).
	ConstBF16(host []uint16) (Tensor, error)
	// Upload enqueues a copy of src into dst (len(src) == dst.Len(), F32); src is read before
	// Upload returns.
	Upload(dst Tensor, src []float32)
	// Download waits for every op enqueued so far and copies src (F32) into dst
	// (len(dst) == src.Len()). It returns the first failure of any of those ops.
	Download(dst []float32, src Tensor) error
	// Sync waits for every op enqueued so far and returns the first failure of any of them.
	Sync() error

	// Copy sets dst = src (same dtype and length; they must not overlap).
	Copy(dst, src Tensor)
	// GatherRows sets row i of dst to row rows[i] of src (rows of d float32 elements).
	GatherRows(dst, src Tensor, rows []int, d int)
	// ScatterAddRows adds weights[i]·(row i of src) to row rows[i] of dst (rows of d elements),
	// the product rounded to float32 before the sum, as HF's expert combine does. rows may repeat.
	ScatterAddRows(dst, src Tensor, rows []int, weights []float32, d int)
	// Embed sets row i of dst [len(ids) × d] to row ids[i] of table [vocab × d] (F32 or BF16,
	// widened exactly). The ids must be in range (the engine checks them against its vocabulary).
	Embed(dst, table Tensor, ids []int, d int)

	// Linear computes dst[m×n] = x[m×k] · wᵀ, w [n×k] in nn.Linear layout (F32 or BF16), with
	// float32 accumulation; with accumulate, dst += x·wᵀ instead. m = 1 is a decode GEMV.
	Linear(dst, x Tensor, m, k int, w Tensor, n int, accumulate bool)
	// RMSNorm sets each of rows rows of dst (d elements each) to w ⊙ (x · 1/√(mean(x²) + eps)),
	// following HF's float32 MixtralRMSNorm and T5LayerNorm (the same op: T5's layer norm scales
	// by the root mean square and subtracts no mean). The CPU accumulates the mean of squares in
	// float64 (within 1 ulp of torch's float32 reduction); the rest is float32. dst may be x.
	RMSNorm(dst, x Tensor, rows, d int, w Tensor, eps float32)
	// Softmax replaces each of rows rows of x (n elements each) by its softmax (max subtracted
	// first). A row of all −Inf yields NaNs, as in torch.
	Softmax(x Tensor, rows, n int)
	// ReLU replaces x by max(x, 0) (NaN stays NaN).
	ReLU(x Tensor)
	// GELU replaces x by its GELU in the tanh approximation (HF's "gelu_new", T5 v1.1's
	// gated-gelu): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
	GELU(x Tensor)
	// SiLU replaces x by x·sigmoid(x).
	SiLU(x Tensor)
	// Mul sets dst = a ⊙ b elementwise (the gated product of a SwiGLU or gated-GELU FFN). dst may
	// be a or b.
	Mul(dst, a, b Tensor)
	// Add sets dst += a elementwise (residual adds).
	Add(dst, a Tensor)
	// Scale sets x *= s.
	Scale(x Tensor, s float32)
	// RoPE rotates each head of x [tokens × heads·headDim] in place by the angles whose cosines and
	// sines are cos, sin [tokens × headDim/2] (HF's rotate_half convention: element i pairs with
	// element i + headDim/2). The host computes the tables once per step from the positions.
	RoPE(x Tensor, tokens, heads, headDim int, cos, sin Tensor)
	// Attention computes out [nq × heads·headDim] from the queries q [nq × heads·headDim] of one
	// sequence and its keys and values k, v [nk × kvHeads·headDim] (a KV cache's used rows), as
	// a describes. Query heads h·r … h·r+r−1 share KV head h (GQA, r = heads/kvHeads). A score is
	// the float32 dot product of a query and a key, times Scale, plus (the relative position bias
	// plus the key mask); the softmax of a query's scores (as Softmax) weighs the sum of the values,
	// accumulated in float32.
	Attention(out, q, k, v Tensor, nq, nk int, a *Attention)
}

// Attention describes one attention call (see Backend.Attention).
//
// The router's top-k is not a backend op: a MoE block downloads its router logits ([tokens ×
// experts], a few hundred bytes per token) and the routing package picks the experts on the host,
// in torch's order, because that choice decides which experts the worker fetches over the network
// and must be bit-identical on every backend; the download is tiny next to an expert's transfer.
type Attention struct {
	Heads, KVHeads, HeadDim int
	// Scale multiplies each query·key dot product: 1 for T5, 1/√headDim for Mixtral.
	Scale float32
	// Causal: query i, at position Past+i, sees keys at positions ≤ Past+i.
	Causal bool
	// Past is the number of keys cached before this call's queries (their positions start there).
	Past int
	// Window, with Causal, limits query position qp to keys kp > qp − Window (Mixtral's sliding
	// window); 0 means no limit.
	Window int
	// Bias, when not zero, is T5's relative position bias as a [2·BiasReach+1 × Heads] F32 table:
	// row r holds, per head, the bias of relative position kp − qp = r − BiasReach, with kp − qp
	// clamped to [−BiasReach, BiasReach] (beyond its max distance T5's bucket no longer changes).
	Bias      Tensor
	BiasReach int
	// Mask, when not zero, is an additive F32 key mask [nk]: 0 for a valid key, MaskValue for a
	// masked one (encoder padding), added to the bias before the score.
	Mask Tensor
}

// MaskValue is what HF adds to a masked attention score: torch.finfo(float32).min.
const MaskValue = -math.MaxFloat32

// DType is a tensor's element type.
type DType uint8

// Element types.
const (
	F32  DType = iota + 1 // float32
	BF16                  // bfloat16 (raw bits in a uint16)
)

// Size is the size of one element in bytes.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case BF16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Memory is a backend's storage behind tensors: host slices for the CPU backend, a device
// allocation (or a whole arena, whose tensors have several dtypes) for a GPU. A backend computes
// only on its own kind of memory.
type Memory interface {
	// Bytes is the size of the memory.
	Bytes() int64
}

// Tensor is a range of elements of one dtype in a backend's memory. It is a small value: views
// (View, Rows) copy it with another offset and length and allocate nothing. The zero Tensor is
// "no tensor" (IsZero).
type Tensor struct {
	mem Memory
	off int
	n   int
	dt  DType
}

// NewTensor returns the n elements of type dt that start off elements (of dt) into mem: bytes
// [off·size, (off+n)·size). Backends use it to hand out their memory (a GPU backend wraps a device
// allocation, a worker's device an expert in its cache arena).
func NewTensor(mem Memory, dt DType, off, n int) Tensor {
	size := int64(dt.Size())
	if mem == nil || size == 0 || off < 0 || n < 0 || int64(off+n)*size > mem.Bytes() {
		b := int64(-1)
		if mem != nil {
			b = mem.Bytes()
		}
		panic(fmt.Sprintf("compute: %s tensor [%d, %d+%d) of a memory of %d bytes", dt, off, off, n, b))
	}
	return Tensor{mem: mem, off: off, n: n, dt: dt}
}

// Memory returns the memory the tensor is a range of (nil for the zero Tensor).
func (t Tensor) Memory() Memory { return t.mem }

// Offset is the index of the tensor's first element in its Memory, in elements of its dtype.
func (t Tensor) Offset() int { return t.off }

// ByteOffset is where the tensor starts in its Memory, in bytes (a device pointer's offset).
func (t Tensor) ByteOffset() int64 { return int64(t.off) * int64(t.dt.Size()) }

// Len is the number of elements.
func (t Tensor) Len() int { return t.n }

// DType is the element type.
func (t Tensor) DType() DType { return t.dt }

// Bytes is the tensor's size in bytes.
func (t Tensor) Bytes() int64 { return int64(t.n) * int64(t.dt.Size()) }

// IsZero reports the zero Tensor (no tensor).
func (t Tensor) IsZero() bool { return t.mem == nil }

// View returns elements [off, off+n) of t.
func (t Tensor) View(off, n int) Tensor {
	if off < 0 || n < 0 || off+n > t.n {
		panic(fmt.Sprintf("compute: view [%d, %d+%d) of a tensor of %d elements", off, off, n, t.n))
	}
	return Tensor{mem: t.mem, off: t.off + off, n: n, dt: t.dt}
}

// Rows returns rows [r0, r1) of t read as a matrix with width elements per row.
func (t Tensor) Rows(r0, r1, width int) Tensor { return t.View(r0*width, (r1-r0)*width) }
