package serve

import (
	"fmt"
	"sync"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/model"
)

// ledgerBackend is the CPU backend with a ledger of the tensors Alloc handed out and Free has not
// taken back: a GPU backend's memory is not collected by Go's GC, so whatever a sequence holds
// (its KV caches) the server must free when the sequence ends.
type ledgerBackend struct {
	*compute.CPU
	mu   sync.Mutex
	live map[compute.Memory]bool
	bad  []string
}

func (b *ledgerBackend) Alloc(dt compute.DType, n int) (compute.Tensor, error) {
	x, err := b.CPU.Alloc(dt, n)
	if err == nil {
		b.mu.Lock()
		b.live[x.Memory()] = true
		b.mu.Unlock()
	}
	return x, err
}

func (b *ledgerBackend) Free(x compute.Tensor) {
	if x.IsZero() {
		return
	}
	b.mu.Lock()
	if !b.live[x.Memory()] {
		b.bad = append(b.bad, fmt.Sprintf("Free of a %s[%d] that is not live (freed twice?)", x.DType(), x.Len()))
	}
	delete(b.live, x.Memory())
	b.mu.Unlock()
	b.CPU.Free(x)
}

func (b *ledgerBackend) liveAllocs() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.live)
}

// TestSequencesFreeTheirCaches: requests that finish, one whose client goes away mid-stream, and a
// sequence preempted under a KV-cache budget (and recomputed) leave nothing the engine allocated on
// the backend live: every way a sequence ends closes its engine sequence.
func TestSequencesFreeTheirCaches(t *testing.T) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			ckpt, err := model.OpenCheckpoint(fixtureDir(name))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ckpt.Close() })
			be := &ledgerBackend{CPU: compute.NewCPU(2), live: map[compute.Memory]bool{}}
			t.Cleanup(be.CPU.Close)
			m, err := engine.Load(ckpt, be, engine.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			// A client that goes away mid-stream, and requests that finish.
			ts := newTestServer(t, name, m, func(c *Config) { c.MaxTokens = 1 << 20 })
			_, cancel := streamUntil(t, ts, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 1 << 20, "temperature": 0, "ignore_eos": true, "stream": true}, 3)
			cancel()
			eventually(t, "the request counted as 499", func() bool {
				return metricValue(t, ts.reg, "pregate_requests_total", "code", "499") == 1
			})
			ts.complete(t, map[string]any{"prompt": [][]int{{5, 6, 7}, {8, 9}}, "max_tokens": 3, "temperature": 0})
			eventually(t, "no running request", func() bool { return metricValue(t, ts.reg, "pregate_num_requests_running") == 0 })
			if n := be.liveAllocs(); n != 0 {
				t.Errorf("after a cancelled and a finished request, %d tensors the engine allocated are still live", n)
			}
			ts.Close()

			// Two sequences whose caches do not both fit the budget: one is preempted and
			// recomputed.
			const maxTokens = 60
			budget := m.Info().AdmitBytes(3, maxTokens) * 3 / 2
			ts = newTestServer(t, name, m, func(c *Config) {
				c.KVCacheBytes, c.Preemption, c.MaxRunning = budget, true, 2
			})
			c := ts.complete(t, map[string]any{"prompt": [][]int{{5, 6, 7}, {8, 9, 10}}, "max_tokens": maxTokens, "temperature": 0, "ignore_eos": true})
			if len(c.Choices) != 2 {
				t.Fatalf("%d choices", len(c.Choices))
			}
			if got := metricValue(t, ts.reg, "pregate_num_preemptions_total"); got < 1 {
				t.Errorf("%v preemptions: the test wants one", got)
			}
			eventually(t, "no running request", func() bool { return metricValue(t, ts.reg, "pregate_num_requests_running") == 0 })
			if n := be.liveAllocs(); n != 0 {
				t.Errorf("after a preemption, %d tensors the engine allocated are still live", n)
			}
			be.mu.Lock()
			defer be.mu.Unlock()
			for _, b := range be.bad {
				t.Error(b)
			}
		})
	}
}
