package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/routing"
)

// Encoder is a Model whose encoder pass can run in slices between Steps (Switch): a server charges
// each slice to its per-step token budget, so that a long prompt's encoder pass does not hold up
// the decode steps of the others.
type Encoder interface {
	// BeginEncode makes a pass over prompts that has computed nothing yet; the model runs nothing
	// else of the job's until its Run (Steps of other sequences may come between Runs).
	BeginEncode(prompts [][]int) (EncodeJob, error)
}

// EncodeJob is an encoder pass run in slices. The encoder attends over the whole prompt at each
// layer, so a layer runs in two phases over the rows (the prompt tokens), each cut into chunks of
// rows: the keys and values of every row, from the layer's input; then, per chunk of query rows,
// attention over all keys, the output projection and the feed-forward (the MoE routes per token).
// A last phase, also by chunks of rows, applies the final norm and computes the decoder's
// cross-attention keys and values. The tokens equal one whole pass's.
type EncodeJob interface {
	// Run computes at most tokens prompt tokens' worth of the pass (a token's worth: one row through
	// every phase: both of every encoder layer, and the final norm with the decoder's
	// cross-attention keys and values), at least one row of one phase, and reports whether the pass
	// is done:
	// then Sequences has the started sequences. An error leaves the job failed (Close it).
	Run(ctx context.Context, tokens int) (done bool, err error)
	// Left is the work left, in Run's tokens (rounded up; 0 once done).
	Left() int
	// Sequences hands over one started Sequence per prompt once Run has reported done (the caller
	// closes them), else nil.
	Sequences() []*Sequence
	// Close frees what the job holds (and the encoder outputs of sequences not handed over). It is
	// idempotent.
	Close()
}

// BeginEncode implements Encoder.
func (m *Switch) BeginEncode(prompts [][]int) (EncodeJob, error) {
	return m.beginEncode(prompts, nil)
}

// encodeJob is Switch's EncodeJob. Between Runs it holds the residual stream of every prompt
// token and the current layer's keys and values (tokens × (d_model + 2·inner) floats), besides
// the encoder outputs the sequences will keep.
type encodeJob struct {
	m       *Switch
	prompts [][]int
	seqLens []int
	tokens  int
	outs    []*encoderOut
	x, k, v compute.Tensor // [tokens × d] residual stream; [tokens × inner] the layer's keys and values
	// phase is the next slice's: 2·layer projects the layer's keys and values, 2·layer+1 runs its
	// attention and feed-forward, 2·layers the final norm and the cross-attention keys and values.
	phase int
	row   int // the next slice's first row
	pre   map[int]*preRouted
	carry capacityCarry
	done  bool
	err   error
}

func (m *Switch) beginEncode(ids [][]int, masks [][]int) (_ *encodeJob, err error) {
	cfg := m.cfg
	d, inner := cfg.DModel, cfg.NumHeads*cfg.DKV
	j := &encodeJob{m: m, prompts: ids, seqLens: make([]int, len(ids)), outs: make([]*encoderOut, len(ids)),
		pre: map[int]*preRouted{}, carry: capacityCarry{numSeqs: len(ids), counts: map[int][]int{}}}
	for i, p := range ids {
		if len(p) == 0 {
			return nil, fmt.Errorf("%w: prompt %d is empty", ErrBadInput, i)
		}
		if masks != nil && len(masks[i]) != len(p) {
			return nil, fmt.Errorf("%w: mask %d has %d entries for %d tokens", ErrBadInput, i, len(masks[i]), len(p))
		}
		if err := checkIDs(p, cfg.VocabSize); err != nil {
			return nil, err
		}
		j.seqLens[i] = len(p)
		j.tokens += len(p)
	}
	defer func() {
		if err != nil {
			j.Close()
		}
	}()
	// Each sequence's outputs are its own allocations, which it keeps for its life.
	for i, p := range ids {
		o := &encoderOut{crossK: make([]kvCache, len(m.dec.blocks))}
		j.outs[i] = o
		if o.hidden, err = m.be.Alloc(compute.F32, len(p)*d); err != nil {
			return nil, err
		}
		if o.mask, err = m.be.Alloc(compute.F32, len(p)); err != nil {
			return nil, err
		}
		mask := make([]float32, len(p))
		for t := range p {
			if masks != nil && masks[i][t] == 0 {
				mask[t] = compute.MaskValue
				o.masked = true
			}
		}
		m.be.Upload(o.mask, mask)
		for b := range o.crossK {
			if err := o.crossK[b].reserve(m.be, len(p)*inner); err != nil {
				return nil, err
			}
			o.crossK[b].used = len(p) * inner
		}
	}
	if j.x, err = m.be.Alloc(compute.F32, j.tokens*d); err != nil {
		return nil, err
	}
	if j.k, err = m.be.Alloc(compute.F32, j.tokens*inner); err != nil {
		return nil, err
	}
	if j.v, err = m.be.Alloc(compute.F32, j.tokens*inner); err != nil {
		return nil, err
	}
	all := make([]int, 0, j.tokens)
	for _, p := range ids {
		all = append(all, p...)
	}
	m.be.Embed(j.x, m.shared.T, all, d)
	return j, nil
}

// errJobFailed is what Run returns after a failed Run.
var errJobFailed = errors.New("engine: the encoder pass failed before")

// Run implements EncodeJob.
func (j *encodeJob) Run(ctx context.Context, tokens int) (bool, error) {
	switch {
	case j.err != nil:
		return false, fmt.Errorf("%w: %v", errJobFailed, j.err)
	case j.done:
		return true, nil
	}
	return j.runRows(ctx, tokens*j.phases()) // a row through one phase is 1/phases of a token's worth
}

// phases is the number of phases of the pass.
func (j *encodeJob) phases() int { return 2*len(j.m.enc.blocks) + 1 }

// runRows is Run by rows of one phase (at least one).
func (j *encodeJob) runRows(ctx context.Context, rows int) (bool, error) {
	last := j.phases() - 1
	for rows = max(1, rows); rows > 0 && j.phase <= last; {
		n := min(rows, j.tokens-j.row)
		var err error
		switch {
		case j.phase == last:
			j.finish(j.row, j.row+n)
		case j.phase%2 == 0:
			err = j.project(ctx, j.row, j.row+n)
		default:
			err = j.slice(ctx, j.row, j.row+n)
		}
		if err != nil {
			j.err = err
			return false, err
		}
		rows -= n
		if j.row += n; j.row < j.tokens {
			continue
		}
		if j.phase%2 == 1 {
			if b := j.m.enc.blocks[j.phase/2].moe; b != nil {
				delete(j.pre, b.index) // routed this layer
			}
		}
		j.phase, j.row = j.phase+1, 0
	}
	j.done = j.phase > last
	if err := j.m.be.Sync(); err != nil {
		j.err = err
		return false, err
	}
	return j.done, nil
}

// Left implements EncodeJob.
func (j *encodeJob) Left() int {
	if j.done {
		return 0
	}
	rows := (j.phases()-j.phase)*j.tokens - j.row
	return (rows + j.phases() - 1) / j.phases()
}

// project computes the current layer's keys and values of rows [r0, r1), from the layer's input.
func (j *encodeJob) project(ctx context.Context, r0, r1 int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m := j.m
	d, inner, n := m.cfg.DModel, m.cfg.NumHeads*m.cfg.DKV, r1-r0
	b := &m.enc.blocks[j.phase/2]
	sc := m.sc
	defer sc.release(sc.mark())
	xn := sc.f32(n * d)
	if sc.err != nil {
		return sc.err
	}
	m.be.RMSNorm(xn, j.x.Rows(r0, r1, d), n, d, b.lnSelf, float32(m.cfg.LayerNormEpsilon))
	linear(m.be, j.k.Rows(r0, r1, inner), xn, n, b.self.k, false)
	linear(m.be, j.v.Rows(r0, r1, inner), xn, n, b.self.v, false)
	return nil
}

// slice runs the current layer for the query rows [r0, r1) of the packed prompts, whose keys and
// values (every row's) project has computed.
func (j *encodeJob) slice(ctx context.Context, r0, r1 int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m := j.m
	cfg := m.cfg
	d, inner, heads, n := cfg.DModel, cfg.NumHeads*cfg.DKV, cfg.NumHeads, r1-r0
	eps := float32(cfg.LayerNormEpsilon)
	be, sc := m.be, m.sc
	defer sc.release(sc.mark())
	b := &m.enc.blocks[j.phase/2]
	xn, q, attnOut := sc.f32(n*d), sc.f32(n*inner), sc.f32(n*inner)
	var h compute.Tensor
	if b.moe == nil {
		h = sc.f32(n * cfg.DFF)
	}
	if sc.err != nil {
		return sc.err
	}
	x := j.x.Rows(r0, r1, d)
	// Self-attention of the rows over every key of their sequence, with the stack's position bias.
	be.RMSNorm(xn, x, n, d, b.lnSelf, eps)
	linear(be, q, xn, n, b.self.q, false)
	segLens := j.segments(r0, r1)
	t, start := 0, 0
	for si, L := range j.seqLens {
		lo, hi := max(r0, start), min(r1, start+L)
		if lo < hi {
			a := compute.Attention{Heads: heads, KVHeads: heads, HeadDim: cfg.DKV, Scale: 1, Past: lo - start,
				Bias: m.enc.bias, BiasReach: m.enc.reach}
			if j.outs[si].masked {
				a.Mask = j.outs[si].mask
			}
			be.Attention(attnOut.Rows(t, t+hi-lo, inner), q.Rows(t, t+hi-lo, inner),
				j.k.Rows(start, start+L, inner), j.v.Rows(start, start+L, inner), hi-lo, L, &a)
			t += hi - lo
		}
		start += L
	}
	linear(be, x, attnOut, n, b.self.o, true)
	// Feed-forward: dense, or a top-1 MoE that routes each row on its own.
	be.RMSNorm(xn, x, n, d, b.lnFF, eps)
	if b.moe == nil {
		b.denseFF(be, x, xn, h, n)
		return nil
	}
	var routed *preRouted
	if p := j.pre[b.moe.index]; p != nil {
		k, e := b.moe.gate.TopK, b.moe.numExperts
		routed = &preRouted{choices: p.choices[r0*k : r1*k], logits: p.logits[r0*e : r1*e]}
	}
	m.moe.carry = &j.carry
	defer func() { m.moe.carry = nil }()
	next, err := m.moe.run(ctx, b.moe, xn, x, n, segLens, routed, nil)
	if err != nil {
		return err
	}
	if next != nil {
		// The pre-gate's choices for the next MoE block, kept until that block's layer.
		p := j.pre[b.moe.next]
		if p == nil {
			p = &preRouted{choices: make([]routing.Choice, j.tokens*b.moe.gate.TopK), logits: make([]float32, j.tokens*b.moe.numExperts)}
			j.pre[b.moe.next] = p
		}
		copy(p.choices[r0*b.moe.gate.TopK:], next.choices)
		copy(p.logits[r0*b.moe.numExperts:], next.logits)
	}
	return nil
}

// segments returns the lengths of the parts of sequences that rows [r0, r1) cover, and sets the
// capacity carry's sequence of each.
func (j *encodeJob) segments(r0, r1 int) []int {
	var segLens []int
	j.carry.seqs = j.carry.seqs[:0]
	start := 0
	for si, L := range j.seqLens {
		if lo, hi := max(r0, start), min(r1, start+L); lo < hi {
			segLens = append(segLens, hi-lo)
			j.carry.seqs = append(j.carry.seqs, si)
		}
		start += L
	}
	return segLens
}

// finish applies the encoder's final norm to rows [r0, r1) and computes their part of each
// sequence's encoder output and of the cross-attention keys and values of every decoder block.
func (j *encodeJob) finish(r0, r1 int) {
	m := j.m
	d, inner := m.cfg.DModel, m.cfg.NumHeads*m.cfg.DKV
	m.be.RMSNorm(j.x.Rows(r0, r1, d), j.x.Rows(r0, r1, d), r1-r0, d, m.enc.final, float32(m.cfg.LayerNormEpsilon))
	start := 0
	for i, o := range j.outs {
		L := j.seqLens[i]
		if lo, hi := max(r0, start)-start, min(r1, start+L)-start; lo < hi {
			h := o.hidden.Rows(lo, hi, d)
			m.be.Copy(h, j.x.Rows(start+lo, start+hi, d))
			for b := range m.dec.blocks {
				c := &o.crossK[b]
				linear(m.be, c.k.Rows(lo, hi, inner), h, hi-lo, m.dec.blocks[b].cross.k, false)
				linear(m.be, c.v.Rows(lo, hi, inner), h, hi-lo, m.dec.blocks[b].cross.v, false)
			}
		}
		start += L
	}
}

// Sequences implements EncodeJob.
func (j *encodeJob) Sequences() []*Sequence {
	if !j.done || j.outs == nil {
		return nil
	}
	seqs := make([]*Sequence, len(j.outs))
	for i, o := range j.outs {
		seqs[i] = &Sequence{Pending: []int{j.m.cfg.DecoderStartTokenID}, kv: make([]kvCache, len(j.m.dec.blocks)), enc: o,
			width: j.m.cfg.NumHeads * j.m.cfg.DKV, be: j.m.be}
	}
	j.outs = nil
	j.free()
	return seqs
}

// Close implements EncodeJob.
func (j *encodeJob) Close() {
	for _, o := range j.outs {
		if o != nil {
			o.free(j.m.be)
		}
	}
	j.outs = nil
	j.free()
}

// free frees the pass's activations.
func (j *encodeJob) free() {
	be := j.m.be
	be.Free(j.x)
	be.Free(j.k)
	be.Free(j.v)
	j.x, j.k, j.v, j.pre = compute.Tensor{}, compute.Tensor{}, compute.Tensor{}, nil
}
