package engine

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// failingExperts fails one expert's Acquire as a worker does when every store replica failed.
type failingExperts struct {
	Experts
	block, expert int
}

func (f *failingExperts) Acquire(ctx context.Context, block, expert int) (*ExpertWeights, error) {
	if block == f.block && expert == f.expert {
		return nil, ErrExpertUnavailable
	}
	return f.Experts.Acquire(ctx, block, expert)
}

// firstRoute records the first MoE block's choices.
type firstRoute struct{ choices []routing.Choice }

func (r *firstRoute) Route(block int, _ []float32, choices []routing.Choice) {
	if block == 0 {
		r.choices = slices.Clone(choices)
	}
}

// TestUnavailableExpertFailsOnlyItsSequences: an unavailable expert fails the sequence routed to it
// (SequenceErrors) and the other sequence of the Step gets the logits it would have had.
func TestUnavailableExpertFailsOnlyItsSequences(t *testing.T) {
	f := openFixture(t, "mixtral-tiny")
	cfg := f.ckpt.Config().Mixtral
	local := NewLocalExperts(f.ckpt, newCPU(t, 1), model.ExpertNames(f.ckpt.Config()), slices.Repeat([]int{cfg.NumLocalExperts}, cfg.NumHiddenLayers),
		cfg.HiddenSize, cfg.IntermediateSize)
	prompts := [][]int{{7}, {300}}
	step := func(experts Experts, tr Tracer) ([][]float32, error) {
		t.Helper()
		m, err := LoadMixtral(f.ckpt, newCPU(t, 2), Options{Experts: experts, Tracer: tr})
		if err != nil {
			t.Fatal(err)
		}
		seqs, err := m.Start(context.Background(), prompts)
		if err != nil {
			t.Fatal(err)
		}
		return m.Step(context.Background(), seqs, false)
	}
	tr := &firstRoute{}
	want, err := step(local, tr)
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.NumExpertsPerTok
	a, b := tr.choices[:k], tr.choices[k:]
	failed := -1
	for _, c := range a {
		if !slices.ContainsFunc(b, func(d routing.Choice) bool { return d.Expert == c.Expert }) {
			failed = c.Expert
		}
	}
	if failed < 0 {
		t.Skipf("the two prompts share their first block's experts %v %v", a, b)
	}
	got, err := step(&failingExperts{Experts: local, block: 0, expert: failed}, nil)
	var se *SequenceErrors
	if !errors.As(err, &se) || !errors.Is(err, ErrExpertUnavailable) || len(se.Failed) != 1 || se.Failed[0] == nil {
		t.Fatalf("err %v, want SequenceErrors failing sequence 0 alone", err)
	}
	if !slices.Equal(got[1], want[1]) {
		t.Errorf("the other sequence's logits changed")
	}
}
