package engine

import (
	"fmt"
	"unsafe"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
)

// Weight is a matrix [Rows × Cols] (nn.Linear layout: [out, in]) on the model's backend, in
// float32 or bfloat16. BF16 weights stay 16-bit in memory, halving the bytes a memory-bound decode
// step reads; they are widened to float32 inside the GEMM, which accumulates in float32.
type Weight struct {
	Rows, Cols int
	T          compute.Tensor // Rows·Cols elements, F32 or BF16
}

// Bytes is the weight's size in memory.
func (w Weight) Bytes() int64 { return w.T.Bytes() }

// elemBytes is the size of one element: expert weights share the dtype of the embeddings.
func (w Weight) elemBytes() int64 { return int64(w.T.DType().Size()) }

// IsZero reports an absent weight.
func (w Weight) IsZero() bool { return w.T.IsZero() }

// linear computes dst[m×Rows] (+)= x[m×Cols] · wᵀ.
func linear(be compute.Backend, dst, x compute.Tensor, m int, w Weight, accumulate bool) {
	be.Linear(dst.View(0, m*w.Rows), x.View(0, m*w.Cols), m, w.Cols, w.T, w.Rows, accumulate)
}

// weightLoader reads weights from a checkpoint and remembers the first error, so layer tables read
// as a list of names instead of a ladder of error checks.
type weightLoader struct {
	ckpt   *model.Checkpoint
	be     compute.Backend
	err    error
	bytes  int64
	consts []compute.Tensor // every tensor made on be, for the model's Close
}

// constF32 makes a tensor of v on the backend (see compute.Backend.Const).
func (l *weightLoader) constF32(v []float32) compute.Tensor {
	if l.err != nil {
		return compute.Tensor{}
	}
	t, err := l.be.Const(v)
	return l.keep(t, err)
}

// constBF16 makes a tensor of bfloat16 v on the backend.
func (l *weightLoader) constBF16(v []uint16) compute.Tensor {
	if l.err != nil {
		return compute.Tensor{}
	}
	t, err := l.be.ConstBF16(v)
	return l.keep(t, err)
}

func (l *weightLoader) keep(t compute.Tensor, err error) compute.Tensor {
	if err != nil {
		l.err = err
		return compute.Tensor{}
	}
	l.consts = append(l.consts, t)
	return t
}

// free frees every tensor the loader made (a load that failed part way; a model's Close).
func (l *weightLoader) free() {
	freeAll(l.be, l.consts)
	l.consts = nil
}

// owned is what a model's Load made on its backend, which the model's Close frees.
type owned struct {
	weights []compute.Tensor // every tensor of the model's weights
	local   *LocalExperts    // the Experts Load made (nil when given one)
}

// free frees the weights and the experts the model loaded itself; a second call does nothing.
func (o *owned) free(be compute.Backend) {
	freeAll(be, o.weights)
	o.weights = nil
	if o.local != nil {
		o.local.Close()
	}
}

// freeAll frees tensors on be.
func freeAll(be compute.Backend, ts []compute.Tensor) {
	for _, t := range ts {
		be.Free(t)
	}
}

// matrix loads a [rows × cols] weight. BF16 tensors are viewed in place (copied only when
// misaligned); other dtypes become float32 (F32 viewed in place when aligned).
func (l *weightLoader) matrix(name string, rows, cols int) Weight {
	if l.err != nil {
		return Weight{}
	}
	w := Weight{Rows: rows, Cols: cols}
	info, err := l.ckpt.Info(name)
	if err != nil {
		l.err = err
		return Weight{}
	}
	if info.DType == model.BF16 {
		b, info, err := l.ckpt.Bytes(name)
		if err != nil {
			l.err = err
			return Weight{}
		}
		if len(info.Shape) != 2 || info.Shape[0] != rows || info.Shape[1] != cols {
			l.err = fmt.Errorf("%w: tensor %s in %s has shape %v, config wants [%d %d]", ErrUnsupported, name, info.File, info.Shape, rows, cols)
			return Weight{}
		}
		w.T = l.constBF16(bf16View(b))
	} else {
		var f []float32
		if f, l.err = l.ckpt.Float32(name, rows, cols); l.err == nil {
			w.T = l.constF32(f)
		}
	}
	l.bytes += w.Bytes()
	return w
}

// bf16View returns the little-endian bfloat16 elements of b: b itself when it is 2-aligned, else
// a copy.
func bf16View(b []byte) []uint16 {
	n := len(b) / 2
	if n == 0 {
		return nil
	}
	if uintptr(unsafe.Pointer(&b[0]))%2 == 0 {
		return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
	}
	v := make([]uint16, n)
	for i := range v {
		v[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
	}
	return v
}

// vector loads a float32 vector of n elements (norm weights).
func (l *weightLoader) vector(name string, n int) compute.Tensor {
	if l.err != nil {
		return compute.Tensor{}
	}
	v, err := l.ckpt.Float32(name, n)
	if err != nil {
		l.err = err
		return compute.Tensor{}
	}
	l.bytes += int64(n) * 4
	return l.constF32(v)
}

// table loads a small float32 matrix [rows × cols] (position bias tables).
func (l *weightLoader) table(name string, rows, cols int) []float32 {
	if l.err != nil {
		return nil
	}
	v, err := l.ckpt.Float32(name, rows, cols)
	if err != nil {
		l.err = err
		return nil
	}
	l.bytes += int64(len(v)) * 4
	return v
}

// optional loads a matrix only when the checkpoint has it.
func (l *weightLoader) optional(name string, rows, cols int) Weight {
	if l.err != nil || !l.ckpt.Has(name) {
		return Weight{}
	}
	return l.matrix(name, rows, cols)
}

// embed looks up the pending tokens of seqs in the embedding table w, packed into a new tensor
// x [tokens × d] of sc.
func embed(sc *scratch, w Weight, seqs []*Sequence, tokens int) (compute.Tensor, error) {
	x := sc.f32(tokens * w.Cols)
	if sc.err != nil {
		return compute.Tensor{}, sc.err
	}
	ids := make([]int, 0, tokens)
	for _, s := range seqs {
		ids = append(ids, s.Pending...)
	}
	sc.be.Embed(x, w.T, ids, w.Cols)
	return x, nil
}

// WeightFromBytes makes a [rows × cols] Weight of a tensor's raw little-endian bytes in host memory,
// for the CPU backend (compute.HostTensor): F32 and BF16 are viewed in place when aligned (b must
// then outlive the Weight), other float dtypes are converted to float32. This is how the worker's
// CPU device turns an expert blob in its cache into weights; a GPU device hands device tensors
// (Weight{Rows, Cols, T}) instead.
func WeightFromBytes(dt model.DType, rows, cols int, b []byte) (Weight, error) {
	n := rows * cols
	if rows <= 0 || cols <= 0 || len(b) != n*dt.Size() || !dt.IsFloat() {
		return Weight{}, fmt.Errorf("%w: %d bytes of %s for a [%d %d] weight", ErrUnsupported, len(b), dt, rows, cols)
	}
	w := Weight{Rows: rows, Cols: cols}
	switch {
	case dt == model.BF16:
		w.T = compute.HostTensorBF16(bf16View(b))
	case dt == model.F32 && uintptr(unsafe.Pointer(&b[0]))%4 == 0:
		w.T = compute.HostTensor(unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n))
	default:
		f := make([]float32, n)
		if err := model.ToFloat32(f, b, dt); err != nil {
			return Weight{}, err
		}
		w.T = compute.HostTensor(f)
	}
	return w, nil
}
