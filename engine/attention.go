package engine

import (
	"math"

	"github.com/pregate/pregate/compute"
)

// maskValue is what HF adds to a masked attention score: torch.finfo(float32).min.
const maskValue = -math.MaxFloat32

// attention is one multi-head attention call for one sequence.
type attention struct {
	heads, kvHeads, headDim int
	scale                   float32 // 1 for T5 (no scaling), head_dim^-0.5 for Mixtral
	causal                  bool    // query i (at position past+i) sees keys ≤ past+i
	past                    int     // keys already cached before this call's queries
	window                  int     // with causal: query at qp sees only keys kp > qp − window (0: all)
	// bias, when set, is added to the score of head h, query position qp, key position kp.
	bias func(h, qp, kp int) float32
	// keyMask, when set, marks valid keys; others get maskValue.
	keyMask []bool
}

// run computes out[nq × heads·headDim] from q[nq × heads·headDim] and the keys and values
// k, v [nk × kvHeads·headDim]. Query heads h·r … h·r+r−1 share KV head h (GQA repeat_interleave).
func (a *attention) run(cpu *compute.CPU, out, q, k, v []float32, nq, nk int) {
	qd, kd, hd := a.heads*a.headDim, a.kvHeads*a.headDim, a.headDim
	group := a.heads / a.kvHeads
	cpu.ParallelFor(a.heads*nq, func(lo, hi int) {
		scores := make([]float32, nk)
		for job := lo; job < hi; job++ {
			h, i := job/nq, job%nq
			kh := h / group
			qp := a.past + i
			qi := q[i*qd+h*hd : i*qd+(h+1)*hd]
			first, keys := 0, nk
			if a.causal {
				keys = min(nk, qp+1)
				if a.window > 0 {
					first = max(0, qp-a.window+1)
				}
			}
			s := scores[:keys-first]
			for j := first; j < keys; j++ {
				dot := compute.Dot(qi, k[j*kd+kh*hd:j*kd+(kh+1)*hd]) * a.scale
				var add float32
				if a.bias != nil {
					add = a.bias(h, qp, j)
				}
				if a.keyMask != nil && !a.keyMask[j] {
					add += maskValue
				}
				s[j-first] = dot + add
			}
			compute.Softmax(s)
			oi := out[i*qd+h*hd : i*qd+(h+1)*hd]
			clear(oi)
			for j, p := range s {
				j += first
				compute.Axpy(oi, p, v[j*kd+kh*hd:j*kd+(kh+1)*hd])
			}
		}
	})
}
