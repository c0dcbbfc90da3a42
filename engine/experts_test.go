package engine

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pregate/pregate/model"
)

// seamEvent is one call through the Experts seam.
type seamEvent struct {
	hint    bool // Hint (else Acquire)
	block   int
	experts []int
}

// recordingExperts wraps LocalExperts and records the seam's calls in order.
type recordingExperts struct {
	inner  *LocalExperts
	events []seamEvent
	held   map[[2]int]int
}

func (r *recordingExperts) Hint(block int, experts []int) {
	r.events = append(r.events, seamEvent{hint: true, block: block, experts: slices.Clone(experts)})
}

func (r *recordingExperts) Acquire(ctx context.Context, block, expert int) (*ExpertWeights, error) {
	r.events = append(r.events, seamEvent{block: block, experts: []int{expert}})
	r.held[[2]int{block, expert}]++
	return r.inner.Acquire(ctx, block, expert)
}

func (r *recordingExperts) Release(block, expert int) { r.held[[2]int{block, expert}]-- }

// recordingSwitch loads the pre-gated Switch fixture with its experts behind a recordingExperts.
func recordingSwitch(t *testing.T) (*Switch, *recordingExperts) {
	t.Helper()
	f := openFixture(t, "switch-tiny-pregated")
	local, err := LoadSwitch(f.ckpt, newCPU(t, 1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingExperts{inner: local.moe.experts.(*LocalExperts), held: map[[2]int]int{}}
	m, err := LoadSwitch(f.ckpt, newCPU(t, 1), Options{Experts: rec})
	if err != nil {
		t.Fatal(err)
	}
	return m, rec
}

func TestExpertSeamPreGated(t *testing.T) {
	m, rec := recordingSwitch(t)
	if got := []int{m.Info().MoEBlocks[0].PreGateFor, m.Info().MoEBlocks[2].PreGateFor}; !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("PreGateFor = %v, want [1 3]", got)
	}
	if _, _, err := Generate(context.Background(), m, [][]int{{335, 150, 293, 221}}, GenerateOptions{MaxNewTokens: 4}); err != nil {
		t.Fatal(err)
	}
	// Blocks 1 and 3 are routed by the pre-gates of blocks 0 and 2: their experts must be hinted
	// before the routing block acquires its own experts (so the transfer can overlap that block's
	// compute), and every expert they acquire must be among those hinted (the pre-gate never misses).
	hinted := map[int][]int{}
	acquires := 0
	for i, e := range rec.events {
		switch {
		case e.hint:
			if e.block == 0 || e.block == 2 {
				delete(hinted, e.block+1) // a new pass through the stack starts
			}
			hinted[e.block] = e.experts
		case e.block == 1 || e.block == 3:
			acquires++
			if !slices.Contains(hinted[e.block], e.experts[0]) {
				t.Fatalf("event %d: block %d acquires expert %d, hinted %v", i, e.block, e.experts[0], hinted[e.block])
			}
		default:
			// Acquiring block 0 or 2: the next block's hint must already be there.
			if _, ok := hinted[e.block+1]; !ok {
				t.Fatalf("event %d: block %d computes before block %d was hinted", i, e.block, e.block+1)
			}
		}
	}
	if acquires == 0 {
		t.Fatal("no expert of a pre-gated block was acquired")
	}
	for k, n := range rec.held {
		if n != 0 {
			t.Fatalf("expert %v acquired %d more times than released", k, n)
		}
	}
}

func TestBadInput(t *testing.T) {
	f := openFixture(t, "mixtral-tiny")
	m, err := LoadMixtral(f.ckpt, newCPU(t, 1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := openFixture(t, "switch-tiny")
	sw, err := LoadSwitch(s.ckpt, newCPU(t, 1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"id too large", func() error { _, err := m.Start(ctx, [][]int{{1, 512}}); return err }, ErrBadInput},
		{"negative id", func() error { _, err := sw.Start(ctx, [][]int{{-1}}); return err }, ErrBadInput},
		{"empty prompt", func() error { _, err := m.Start(ctx, [][]int{{}}); return err }, ErrBadInput},
		{"nothing pending", func() error {
			seqs, err := m.Start(ctx, [][]int{{1}})
			if err != nil {
				return err
			}
			seqs[0].Pending = nil
			_, err = m.Step(ctx, seqs, false)
			return err
		}, ErrBadInput},
		{"switch sequence not started", func() error {
			_, err := sw.Step(ctx, []*Sequence{{Pending: []int{0}}}, false)
			return err
		}, ErrBadInput},
		{"too long", func() error {
			_, err := m.Start(ctx, [][]int{make([]int, 300)})
			if err != nil {
				return err
			}
			seqs, _ := m.Start(ctx, [][]int{make([]int, 300)})
			_, err = m.Step(ctx, seqs, false)
			return err
		}, ErrBadInput},
		{"canceled", func() error {
			_, _, err := Generate(canceled, m, [][]int{{1, 2}}, GenerateOptions{MaxNewTokens: 2})
			return err
		}, context.Canceled},
		{"negative max", func() error {
			_, _, err := Generate(ctx, m, [][]int{{1, 2}}, GenerateOptions{MaxNewTokens: -1})
			return err
		}, ErrBadInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestMoENumberingMatchesModelLayout(t *testing.T) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		f := openFixture(t, name)
		m, err := Load(f.ckpt, newCPU(t, 1), Options{})
		if err != nil {
			t.Fatal(err)
		}
		layout := model.MoELayout(f.ckpt.Config())
		blocks := m.Info().MoEBlocks
		if len(layout) != len(blocks) {
			t.Fatalf("%s: %d MoE blocks in the layout, %d in the engine", name, len(layout), len(blocks))
		}
		for i := range blocks {
			if layout[i].Name != blocks[i].Name || len(layout[i].Experts) != blocks[i].NumExperts {
				t.Fatalf("%s: block %d is %s/%d in the layout, %s/%d in the engine", name, i, layout[i].Name, len(layout[i].Experts), blocks[i].Name, blocks[i].NumExperts)
			}
			for _, tensor := range layout[i].Experts[0] {
				if !f.ckpt.Has(tensor) {
					t.Fatalf("%s: layout names %s, not in the checkpoint", name, tensor)
				}
			}
		}
	}
}
