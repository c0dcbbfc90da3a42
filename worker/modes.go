package worker

import (
	"errors"
	"fmt"
)

// Mode is what the pipeline fetches when (docs/ARCHITECTURE.md, "Workers", has the table).
type Mode string

// The modes.
const (
	ModeResident    Mode = "resident"     // every expert loaded once at start
	ModeOnDemand    Mode = "ondemand"     // a block's missing experts once it has routed, then compute
	ModePrefetchAll Mode = "prefetch-all" // during block N, every expert of block N+1
	ModePregated    Mode = "pregated"     // during block N, the experts block N's pre-gate chose for N+1
	ModeSpeculative Mode = "speculative"  // during block N, what N+1's router picks from N's input; misses on demand
)

// Modes lists every mode.
var Modes = []Mode{ModeResident, ModeOnDemand, ModePrefetchAll, ModePregated, ModeSpeculative}

// ParseMode parses a --mode value.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("worker: unknown mode %q (modes: %v)", s, Modes)
}

// ErrModeMismatch: the mode does not fit the checkpoint.
var ErrModeMismatch = errors.New("worker: mode does not fit the checkpoint")

// CheckMode reports whether mode can serve a model (pre-gated or not).
func CheckMode(mode Mode, preGated bool) error {
	switch {
	case mode == ModePregated && !preGated:
		return fmt.Errorf("%w: mode pregated needs a checkpoint with pre-gate tensors (…mlp.pre_gate.weight); this one has none: use speculative", ErrModeMismatch)
	case mode == ModeSpeculative && preGated:
		return fmt.Errorf("%w: mode speculative predicts with the next block's router, but this checkpoint routes by its pre-gates: use pregated", ErrModeMismatch)
	}
	return nil
}

// Speculates reports whether the engine must guess each block's experts with the next block's
// router for this mode (engine.Options.Speculate): only speculative acts on the guesses, and the
// guess costs a router's matrix product per block.
func (m Mode) Speculates() bool { return m.policy().speculate }

// policy is what a mode makes the pipeline do with the engine's calls (the table of
// docs/ARCHITECTURE.md, "Workers"). Every mode fetches the experts a block routed to and that are
// not in the cache (a Hint); a mode only adds to that.
type policy struct {
	// resident: every expert is fetched at start and pinned for good; Hint, Release and eviction
	// have nothing to do.
	resident bool
	// predicted: Predict fetches, during block N, what block N+1 will (probably) use.
	predicted bool
	// nextBlockAll: block N's Hint fetches every expert of block N+1.
	nextBlockAll bool
	// speculate: the engine guesses with the next block's router (Speculates).
	speculate bool
}

func (m Mode) policy() policy {
	switch m {
	case ModeResident:
		return policy{resident: true}
	case ModePrefetchAll:
		return policy{nextBlockAll: true}
	case ModePregated:
		return policy{predicted: true}
	case ModeSpeculative:
		return policy{predicted: true, speculate: true}
	}
	return policy{} // ondemand
}
