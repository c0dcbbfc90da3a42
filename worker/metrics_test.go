package worker

import (
	"context"
	"testing"

	"github.com/pregate/pregate/engine"
)

// TestResetStats: after a generation has counted fetches, hits and a peak, ResetStats zeroes the
// counters and brings the peak down to what the cache holds, where a benchmark starts measuring.
func TestResetStats(t *testing.T) {
	dir := fixture("mixtral-tiny")
	prompts, _ := goldenPrompts(t, dir)
	m := loadPipelined(t, dir, ModeOnDemand, 64<<20, 0, nil, nil)
	if _, _, err := engine.Generate(context.Background(), m, prompts, engine.GenerateOptions{MaxNewTokens: 3}); err != nil {
		t.Fatal(err)
	}
	var before BlockStats
	for _, s := range m.p.Stats() {
		before.Fetches += s.Fetches
		before.Acquires += s.Acquires
	}
	if before.Fetches == 0 || before.Acquires == 0 {
		t.Fatalf("a generation counted %+v", before)
	}
	m.p.ResetStats()
	for b, s := range m.p.Stats() {
		if s != (BlockStats{}) {
			t.Errorf("block %d after ResetStats: %+v", b, s)
		}
	}
	if cs := m.p.Cache().Stats(); cs.Peak != cs.Used {
		t.Errorf("cache %+v: the peak is not what it holds", cs)
	}
}
