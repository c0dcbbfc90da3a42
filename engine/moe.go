package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/routing"
)

// activation is the expert FFN's nonlinearity.
type activation int

const (
	actReLU      activation = iota // Switch: wo(relu(wi x))
	actSiLUGated                   // Mixtral: w2(silu(w1 x) * w3 x)
)

// moeBlock is one MoE block's routing state.
type moeBlock struct {
	index      int
	router     Weight    // [experts × d]
	preGate    Weight    // [experts × d], routes block next; zero when absent
	next       int       // MoE block routed by preGate, -1 if none
	succ       *moeBlock // the next MoE block of the same stack (nil for the last): speculation routes it
	gate       routing.Gate
	numExperts int
}

// moeRunner runs MoE blocks: routing, expert hints and acquisition, expert FFNs.
type moeRunner struct {
	be      compute.Backend
	sc      *scratch // the model's
	experts Experts
	tracer  Tracer
	// carry, while an encoder pass runs a chunk of rows (encodeJob), continues expert capacity
	// from the pass's earlier chunks; nil otherwise (a call's rows are whole sequences).
	carry *capacityCarry
	// speculate: a block without a pre-gate predicts its successor's experts with the successor's
	// own router applied to this block's input, and tells a Predictor.
	speculate bool
	act       activation
	d         int
}

// route computes the choices of blk for xn [tokens × d] with the router w. The logits are
// downloaded and the top-k is taken on the host: routing.Gate's torch-order choice decides which
// experts are fetched, and must not depend on the backend; the logits are tokens × experts floats.
// target is the MoE block the choices are for (blk, or the block blk's pre-gate routes), whose
// capacity counts r.carry continues; -1 for a guess that counts nothing.
func (r *moeRunner) route(blk *moeBlock, w Weight, xn compute.Tensor, tokens int, seqLens []int, target int) ([]routing.Choice, []float32, error) {
	sc := r.sc
	defer sc.release(sc.mark())
	lt := sc.f32(tokens * blk.numExperts)
	if sc.err != nil {
		return nil, nil, sc.err
	}
	linear(r.be, lt, xn, tokens, w, false)
	logits := make([]float32, tokens*blk.numExperts)
	if err := r.be.Download(logits, lt); err != nil {
		return nil, nil, err
	}
	choices := make([]routing.Choice, tokens*blk.gate.TopK)
	if g := blk.gate; r.carry != nil && target >= 0 && g.Capacity > 0 {
		g.Capacity = 0
		g.Route(logits, blk.numExperts, seqLens, choices, nil)
		r.carry.apply(target, choices, g.TopK, blk.numExperts, seqLens, blk.gate.Capacity)
	} else {
		blk.gate.Route(logits, blk.numExperts, seqLens, choices, nil)
	}
	return choices, logits, nil
}

// capacityCarry continues expert capacity (routing.Gate.Capacity: per sequence, in token order)
// across the row chunks of one encoder pass: a chunk's segments are parts of sequences, and the
// choices of the rows before them count.
type capacityCarry struct {
	seqs    []int         // the sequence of each segment of the chunk being run
	numSeqs int           // sequences in the pass
	counts  map[int][]int // per MoE block: [sequence × experts] choices counted so far
}

// apply is routing.ApplyCapacity for the chunk's choices, counting (routing.CountCapacity) from
// where the pass's earlier chunks left each sequence's counts.
func (c *capacityCarry) apply(block int, choices []routing.Choice, topK, numExperts int, segLens []int, capacity int) {
	counts := c.counts[block]
	if counts == nil {
		counts = make([]int, c.numSeqs*numExperts)
		c.counts[block] = counts
	}
	t := 0
	for si, n := range segLens {
		routing.CountCapacity(choices[t*topK:(t+n)*topK], counts[c.seqs[si]*numExperts:][:numExperts], capacity)
		t += n
	}
}

// preRouted carries a pre-gate's decision to the block it routes.
type preRouted struct {
	choices []routing.Choice
	logits  []float32
}

// run computes the MoE output of blk for the normed input xn [tokens × d] and adds it to x.
// routed, when non-nil, is the decision a previous block's pre-gate made for blk. It returns the
// decision of blk's own pre-gate for the block it routes (nil when blk has none).
//
// failed, when non-nil, has one entry per sequence: an expert that is unavailable
// (ErrExpertUnavailable) then fails only the sequences with a token routed to it (their entries
// get the error; their outputs are garbage from here on) and the others go on. Nil: any error
// fails the block.
func (r *moeRunner) run(ctx context.Context, blk *moeBlock, xn, x compute.Tensor, tokens int, seqLens []int, routed *preRouted, failed []error) (*preRouted, error) {
	var choices []routing.Choice
	var logits []float32
	if routed != nil {
		choices, logits = routed.choices, routed.logits
	} else {
		var err error
		if choices, logits, err = r.route(blk, blk.router, xn, tokens, seqLens, blk.index); err != nil {
			return nil, err
		}
	}
	if r.tracer != nil {
		r.tracer.Route(blk.index, logits, choices)
	}
	used := routing.Experts(choices, blk.numExperts)
	r.experts.Hint(blk.index, used)

	// The pre-gate decides the next block's experts now, so their transfer overlaps this block's
	// expert compute (Pre-gated MoE, Hwang et al. 2024).
	var out *preRouted
	if !blk.preGate.IsZero() {
		c, l, err := r.route(blk, blk.preGate, xn, tokens, seqLens, blk.next)
		if err != nil {
			return nil, err
		}
		out = &preRouted{choices: c, logits: l}
		if p, ok := r.experts.(Predictor); ok {
			p.Predict(blk.next, routing.Experts(c, blk.numExperts))
		} else {
			r.experts.Hint(blk.next, routing.Experts(c, blk.numExperts))
		}
	} else if p, ok := r.experts.(Predictor); ok && r.speculate && blk.succ != nil {
		// Speculation: the next block's router on this block's input. The hidden state changes
		// little from one block to the next, so this guesses most of the next block's experts; the
		// next block's own router still decides, so outputs are exact.
		c, _, err := r.route(blk.succ, blk.succ.router, xn, tokens, seqLens, -1)
		if err != nil {
			return nil, err
		}
		p.Predict(blk.succ.index, routing.Experts(c, blk.succ.numExperts))
	}

	sc := r.sc
	defer sc.release(sc.mark())
	moeOut := sc.f32(tokens * r.d)
	if sc.err != nil {
		return nil, sc.err
	}
	rows := make([]int, 0, tokens)
	weights := make([]float32, 0, tokens)
	for _, e := range used {
		rows, weights = rows[:0], weights[:0]
		for i, c := range choices {
			if c.Expert == e {
				rows = append(rows, i/blk.gate.TopK)
				weights = append(weights, c.Weight)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		w, err := r.experts.Acquire(ctx, blk.index, e)
		if err != nil {
			if failed == nil || !errors.Is(err, ErrExpertUnavailable) || ctx.Err() != nil {
				return nil, err
			}
			if !failRows(failed, seqLens, rows, err) {
				return nil, err // every sequence has failed: nothing left to compute
			}
			continue
		}
		err = r.expert(w, xn, rows, weights, moeOut)
		r.experts.Release(blk.index, e)
		if err != nil {
			return nil, err
		}
	}
	r.be.Add(x.View(0, tokens*r.d), moeOut)
	return out, nil
}

// predictNextStep guesses, from this step's last hidden states x [tokens × d] (the residual stream
// after the stack's last block), the experts blk, the first MoE block of the stack, will use in the
// next step, and tells a NextStepPredictor. The next step's input at blk is that step's token
// passed through the layers before blk; the residual stream changes slowly, so the last hidden state
// of each sequence, normed as blk normalises its input (norm), routed by blk's own router, is a
// cheap guess (a [sequences × experts] product). It never changes what the model computes.
func (r *moeRunner) predictNextStep(blk *moeBlock, x compute.Tensor, seqLens []int, norm func(t compute.Tensor, n int)) error {
	p, ok := r.experts.(NextStepPredictor)
	if !ok || blk == nil {
		return nil
	}
	sc := r.sc
	defer sc.release(sc.mark())
	last := sc.f32(len(seqLens) * r.d)
	if sc.err != nil {
		return sc.err
	}
	r.be.GatherRows(last, x, lastRows(seqLens), r.d)
	norm(last, len(seqLens))
	ones := make([]int, len(seqLens))
	for i := range ones {
		ones[i] = 1
	}
	c, _, err := r.route(blk, blk.router, last, len(seqLens), ones, -1)
	if err != nil {
		return err
	}
	p.PredictNextStep(blk.index, routing.Experts(c, blk.numExperts))
	return nil
}

// lastRows returns the index of each sequence's last token in the packed batch.
func lastRows(seqLens []int) []int {
	rows := make([]int, len(seqLens))
	t := 0
	for i, n := range seqLens {
		t += n
		rows[i] = t - 1
	}
	return rows
}

// expert computes out[row] += weight · FFN(xn[row]) for the given rows.
func (r *moeRunner) expert(w *ExpertWeights, xn compute.Tensor, rows []int, weights []float32, out compute.Tensor) error {
	n, d, ff := len(rows), r.d, w.W1.Rows
	sc := r.sc
	defer sc.release(sc.mark())
	xe, h, y := sc.f32(n*d), sc.f32(n*ff), sc.f32(n*d)
	var up compute.Tensor
	if r.act == actSiLUGated {
		up = sc.f32(n * ff)
	}
	if sc.err != nil {
		return sc.err
	}
	r.be.GatherRows(xe, xn, rows, d)
	linear(r.be, h, xe, n, w.W1, false)
	switch r.act {
	case actReLU:
		r.be.ReLU(h)
	case actSiLUGated:
		r.be.SiLU(h)
		linear(r.be, up, xe, n, w.W3, false)
		r.be.Mul(h, h, up)
	}
	linear(r.be, y, h, n, w.W2, false)
	r.be.ScatterAddRows(out, y, rows, weights, d)
	return nil
}

// failRows marks the sequences that own rows (token indexes into the packed batch) failed with err,
// and reports whether some sequence is still unfailed.
func failRows(failed []error, seqLens []int, rows []int, err error) bool {
	for _, row := range rows {
		si, start := 0, 0
		for row >= start+seqLens[si] {
			start += seqLens[si]
			si++
		}
		if failed[si] == nil {
			failed[si] = err
		}
	}
	return slices.Contains(failed, nil)
}

// SequenceErrors is a Step's error when only some of its sequences failed (an expert their tokens
// were routed to was unavailable): the logits Step returns with it are valid for the others.
type SequenceErrors struct {
	Failed map[int]error // by index in the Step's batch
}

func (e *SequenceErrors) Error() string {
	for i, err := range e.Failed {
		return fmt.Sprintf("engine: %d of the step's sequences failed (sequence %d: %v)", len(e.Failed), i, err)
	}
	return "engine: no sequence failed"
}

// Unwrap returns the sequences' errors, so errors.Is finds ErrExpertUnavailable.
func (e *SequenceErrors) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, err := range e.Failed {
		errs = append(errs, err)
	}
	return errs
}

// sequenceErrors returns the SequenceErrors of failed (nil when none failed).
func sequenceErrors(failed []error) error {
	se := &SequenceErrors{Failed: map[int]error{}}
	for i, err := range failed {
		if err != nil {
			se.Failed[i] = err
		}
	}
	if len(se.Failed) == 0 {
		return nil
	}
	return se
}
