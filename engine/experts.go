package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
)

// ExpertWeights are one expert's FFN matrices: out = W2 · (act(W1·x) [⊙ W3·x]).
// Switch: W1 = wi, W2 = wo, act = ReLU, no W3. Mixtral: W1 = w1 (gate), W3 = w3 (up), W2 = w2,
// act = SiLU.
type ExpertWeights struct {
	W1, W3, W2 Weight
}

// Bytes is the expert's size in memory.
func (e *ExpertWeights) Bytes() int64 { return e.W1.Bytes() + e.W3.Bytes() + e.W2.Bytes() }

// Experts is the seam between a model's MoE blocks and where expert weights live. Blocks are
// numbered in forward order (Info.MoEBlocks). The engine calls it from the goroutine running Step.
type Experts interface {
	// Hint tells which experts a block will use, as soon as the engine knows: for a block's own
	// router just before its experts are acquired, for a pre-gated block one block early. It must
	// not block; a provider may start fetching.
	Hint(block int, experts []int)
	// Acquire returns an expert's weights, waiting until they are ready: tensors on the model's
	// backend (a view of the host buffer for the CPU; device memory for a GPU). The engine calls
	// Release once it has computed with them; until then the weights must stay valid.
	Acquire(ctx context.Context, block, expert int) (*ExpertWeights, error)
	// Release ends the use that Acquire began. The engine has then enqueued every op that reads
	// the weights on its backend, but on a device backend those ops may still be running: a device
	// Experts must not overwrite the weights' memory before the compute stream has passed them
	// (an event recorded on it, or a Sync).
	Release(block, expert int)
}

// Predictor is implemented by an Experts that wants to know a block's experts before the block
// runs. Predict is called during block b−1 with the experts block b will (probably) use: a pre-gate's
// decision, which is exact, or a speculation (Options.Speculate: block b's own router on block b−1's
// input), which may be wrong. The block's own Hint still follows when it runs, with the experts it
// really uses. Predict must not block. An Experts that is not a Predictor gets pre-gate decisions
// as Hints instead.
type Predictor interface {
	Predict(block int, experts []int)
}

// NextStepPredictor is implemented by an Experts that wants to know, as a step ends, which experts
// the first MoE block of the decoder will probably use in the next step. No pre-gate precedes that
// block, so without a guess its experts are fetched on demand every step (the stall of issue 16);
// the guess (that block's router on this step's last hidden state) comes before the final norm and
// the LM head, whose compute, with the sampling and the next step's layers up to the block, the
// fetch overlaps. The next step's Hint for the block still says what it really uses: a wrong guess
// costs only bytes. PredictNextStep must not block.
type NextStepPredictor interface {
	PredictNextStep(block int, experts []int)
}

// LocalExperts serves experts straight from a checkpoint's mapping (F32 and BF16 weights are not
// copied by the CPU backend; a device backend uploads each expert once, on first use). It is the
// Experts of `pregate generate`.
type LocalExperts struct {
	ckpt        *model.Checkpoint
	be          compute.Backend
	names       model.ExpertNamer
	dModel, dFF int
	mu          sync.Mutex
	loaded      map[[2]int]*ExpertWeights
	numExperts  []int
}

// NewLocalExperts serves the experts of blocks with numExperts[b] experts each, of shape
// W1, W3 [dFF × dModel] and W2 [dModel × dFF], as tensors on be.
func NewLocalExperts(ckpt *model.Checkpoint, be compute.Backend, names model.ExpertNamer, numExperts []int, dModel, dFF int) *LocalExperts {
	return &LocalExperts{ckpt: ckpt, be: be, names: names, dModel: dModel, dFF: dFF, numExperts: numExperts, loaded: map[[2]int]*ExpertWeights{}}
}

// Hint does nothing: the checkpoint is already in memory.
func (l *LocalExperts) Hint(int, []int) {}

// Release does nothing: the weights live as long as the checkpoint.
func (l *LocalExperts) Release(int, int) {}

// Acquire loads (once) and returns an expert's weights.
func (l *LocalExperts) Acquire(ctx context.Context, block, expert int) (*ExpertWeights, error) {
	if block < 0 || block >= len(l.numExperts) || expert < 0 || expert >= l.numExperts[block] {
		return nil, fmt.Errorf("%w: no expert %d in MoE block %d", ErrBadInput, expert, block)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	key := [2]int{block, expert}
	if w, ok := l.loaded[key]; ok {
		return w, nil
	}
	w, err := LoadExpert(l.ckpt, l.be, l.names, block, expert, l.dModel, l.dFF)
	if err != nil {
		return nil, err
	}
	l.loaded[key] = w
	return w, nil
}

// LoadExpert reads one expert's weights from a checkpoint, under the names that names gives it,
// into tensors on be.
func LoadExpert(ckpt *model.Checkpoint, be compute.Backend, names model.ExpertNamer, block, expert, dModel, dFF int) (*ExpertWeights, error) {
	w1, w3, w2 := names(block, expert)
	l := weightLoader{ckpt: ckpt, be: be}
	e := &ExpertWeights{W1: l.matrix(w1, dFF, dModel), W2: l.matrix(w2, dModel, dFF)}
	if w3 != "" {
		e.W3 = l.matrix(w3, dFF, dModel)
	}
	if l.err != nil {
		l.free()
		return nil, l.err
	}
	return e, nil
}

// Close frees the experts loaded so far on the backend; later Acquires load them again.
func (l *LocalExperts) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.loaded {
		freeAll(l.be, []compute.Tensor{e.W1.T, e.W3.T, e.W2.T})
	}
	clear(l.loaded)
}
