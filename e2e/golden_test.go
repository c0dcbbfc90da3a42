//go:build e2e

package e2e

import (
	"context"
	"slices"
	"testing"
	"time"
)

// goldenFixtures are the fixtures with HF's golden ids.
var goldenFixtures = []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"}

var modes = []string{"resident", "ondemand", "prefetch-all", "pregated", "speculative"}

// modeFits says whether a worker of mode can serve fixture: pregated needs a checkpoint with
// pre-gates, and speculative one without (it predicts with the next block's router).
func modeFits(mode, fixture string) bool {
	switch mode {
	case "pregated":
		return fixture == "switch-tiny-pregated"
	case "speculative":
		return fixture != "switch-tiny-pregated"
	}
	return true
}

// smallCache holds about ten experts of the largest fixture (mixtral-tiny's are 96 KiB), so that
// every mode but resident fetches throughout; resident must hold every expert.
func smallCache(mode string) string {
	if mode == "resident" {
		return "16MiB"
	}
	return "1MiB"
}

// TestGoldenAcrossHosts: a coordinator, 3 stores (R=2) and a worker host per mode, each its own
// namespace; every fixture that fits a mode is served by a worker of that mode in turn, and every
// prompt's greedy ids over HTTP equal HuggingFace's. As in worker/serve's TestGolden, EOS is not
// ignored: the goldens hold no EOS, so every choice finishes by length with its 10 ids.
func TestGoldenAcrossHosts(t *testing.T) {
	row := Record(t, "a. golden fixtures over HTTP across hosts (3 stores, R=2, a worker host per mode)")
	c := StartCluster(t, 3, goldenFixtures...)
	var (
		workers, checked, wrong int
		fetched                 float64
		startTimes              []time.Duration
	)
	for _, mode := range modes {
		nd := c.Net.Node("w-" + mode)
		for _, fx := range goldenFixtures {
			if !modeFits(mode, fx) {
				continue
			}
			t.Run(fx+"/"+mode, func(t *testing.T) {
				prompts, want := goldenPrompts(t, fx)
				start := time.Now()
				p := c.StartWorker(t, nd, WorkerOptions{Model: fx, Mode: mode, Cache: smallCache(mode), DataDir: "worker-" + fx})
				startTimes = append(startTimes, time.Since(start))
				workers++
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				got, err := Complete(ctx, WorkerURL(nd.IP), Completion{Model: fx, Prompt: prompts, MaxTokens: 10})
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(want) {
					t.Fatalf("%d choices for %d prompts", len(got), len(want))
				}
				for i, ch := range got {
					checked++
					if !slices.Equal(ch.TokenIDs, want[i]) || ch.FinishReason != "length" {
						wrong++
						t.Errorf("prompt %d: %v (finish %q), golden %v", i, ch.TokenIDs, ch.FinishReason, want[i])
					}
				}
				m, err := Scrape(ctx, WorkerURL(nd.IP)+"/metrics")
				if err != nil {
					t.Fatal(err)
				}
				f := m.Sum("pregate_moe_fetched_bytes_total")
				if f == 0 {
					t.Error("the worker fetched no expert bytes from the stores")
				}
				fetched += f
				if err := p.Term(15 * time.Second); err != nil {
					t.Errorf("worker stop: %v", err)
				}
			})
		}
	}
	row.Set("workers", "%d", workers)
	row.Set("prompts", "%d", checked)
	row.Set("mismatches", "%d", wrong)
	row.Set("expert MiB fetched", "%.1f", fetched/(1<<20))
	row.Set("worker start→ready p50/max", "%s/%s", ms(percentile(startTimes, 0.5)), ms(percentile(startTimes, 1)))
}
