package engine

import (
	"fmt"
	"unsafe"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
)

// Weight is a matrix [Rows × Cols] (nn.Linear layout: [out, in]) in float32 or bfloat16. BF16
// weights stay 16-bit in memory, halving the bytes a memory-bound decode step reads; they are
// widened to float32 inside the GEMM, which accumulates in float32.
type Weight struct {
	Rows, Cols int
	F32        []float32
	BF16       []uint16
}

// Bytes is the weight's size in memory.
func (w Weight) Bytes() int64 {
	if w.BF16 != nil {
		return int64(len(w.BF16)) * 2
	}
	return int64(len(w.F32)) * 4
}

// elemBytes is the size of one element: expert weights share the dtype of the embeddings.
func (w Weight) elemBytes() int64 {
	if w.BF16 != nil {
		return 2
	}
	return 4
}

// IsZero reports an absent weight.
func (w Weight) IsZero() bool { return w.F32 == nil && w.BF16 == nil }

// linear computes dst[m×Rows] (+)= x[m×Cols] · wᵀ.
func linear(cpu *compute.CPU, dst, x []float32, m int, w Weight, accumulate bool) {
	if w.BF16 != nil {
		cpu.MatMulTBF16(dst[:m*w.Rows], x[:m*w.Cols], m, w.Cols, w.BF16, w.Rows, accumulate)
		return
	}
	cpu.MatMulT(dst[:m*w.Rows], x[:m*w.Cols], m, w.Cols, w.F32, w.Rows, accumulate)
}

// row copies row r of w into dst as float32 (embedding lookup).
func (w Weight) row(dst []float32, r int) {
	if w.BF16 != nil {
		for i, b := range w.BF16[r*w.Cols : (r+1)*w.Cols] {
			dst[i] = model.BF16ToFloat32(b)
		}
		return
	}
	copy(dst, w.F32[r*w.Cols:(r+1)*w.Cols])
}

// weightLoader reads weights from a checkpoint and remembers the first error, so layer tables read
// as a list of names instead of a ladder of error checks.
type weightLoader struct {
	ckpt  *model.Checkpoint
	err   error
	bytes int64
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
		n := rows * cols
		if n > 0 && uintptr(unsafe.Pointer(&b[0]))%2 == 0 {
			w.BF16 = unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
		} else {
			w.BF16 = make([]uint16, n)
			for i := range w.BF16 {
				w.BF16[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
			}
		}
	} else {
		w.F32, l.err = l.ckpt.Float32(name, rows, cols)
	}
	l.bytes += w.Bytes()
	return w
}

// vector loads a float32 vector of n elements (norm weights).
func (l *weightLoader) vector(name string, n int) []float32 {
	if l.err != nil {
		return nil
	}
	v, err := l.ckpt.Float32(name, n)
	if err != nil {
		l.err = err
		return nil
	}
	l.bytes += int64(n) * 4
	return v
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

// embed looks up the pending tokens of seqs in the embedding table w, packed into [tokens × d].
func embed(w Weight, seqs []*Sequence, tokens int) []float32 {
	d := w.Cols
	x := make([]float32, tokens*d)
	t := 0
	for _, s := range seqs {
		for _, id := range s.Pending {
			w.row(x[t*d:(t+1)*d], id)
			t++
		}
	}
	return x
}

// WeightFromBytes makes a [rows × cols] Weight of a tensor's raw little-endian bytes: F32 and BF16
// are viewed in place when aligned (b must then outlive the Weight), other float dtypes are
// converted to float32. This is how the worker turns an expert blob in its cache into weights.
func WeightFromBytes(dt model.DType, rows, cols int, b []byte) (Weight, error) {
	n := rows * cols
	if rows <= 0 || cols <= 0 || len(b) != n*dt.Size() || !dt.IsFloat() {
		return Weight{}, fmt.Errorf("%w: %d bytes of %s for a [%d %d] weight", ErrUnsupported, len(b), dt, rows, cols)
	}
	w := Weight{Rows: rows, Cols: cols}
	switch {
	case dt == model.BF16 && uintptr(unsafe.Pointer(&b[0]))%2 == 0:
		w.BF16 = unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
	case dt == model.BF16:
		w.BF16 = make([]uint16, n)
		for i := range w.BF16 {
			w.BF16[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
	case dt == model.F32 && uintptr(unsafe.Pointer(&b[0]))%4 == 0:
		w.F32 = unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
	default:
		w.F32 = make([]float32, n)
		if err := model.ToFloat32(w.F32, b, dt); err != nil {
			return Weight{}, err
		}
	}
	return w, nil
}
