//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// tinyCache holds 12 of mixtral-tiny's 96 KiB experts, under two layers' worth of the 8 a batch
// of many prompts touches per layer: the worker fetches throughout.
const tinyCache = "1185024"

// faultTokens is what the fault scenarios generate per request (EOS ignored, so always this many).
const faultTokens = 16

// Reference asks the worker at base for each prompt's ids, one request at a time: what the
// scenarios compare with while a fault is on.
func Reference(t testing.TB, base, model string, prompts [][]int) [][]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := make([][]int, len(prompts))
	for i, p := range prompts {
		ch, err := Complete(ctx, base, Completion{Model: model, Prompt: p, MaxTokens: faultTokens, IgnoreEOS: true})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = ch[0].TokenIDs
	}
	return want
}

// Request is one request of a Load: when it started, how long it took, and why it failed (a
// transport or HTTP error, or ids other than the reference's).
type Request struct {
	Start time.Time
	Took  time.Duration
	Err   error
}

// Load is clients goroutines each sending completions of the prompts in turn until Stop.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	reqs   []Request
}

// StartLoad starts the clients; every answer is checked against want (by prompt).
func StartLoad(base, model string, prompts, want [][]int, clients int) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel}
	for c := range clients {
		l.wg.Go(func() {
			for i := c; ctx.Err() == nil; i += clients {
				k := i % len(prompts)
				start := time.Now()
				ch, err := Complete(ctx, base, Completion{Model: model, Prompt: prompts[k], MaxTokens: faultTokens, IgnoreEOS: true})
				if ctx.Err() != nil {
					return // stopped: not the cluster's failure
				}
				if err == nil && (len(ch) != 1 || !slices.Equal(ch[0].TokenIDs, want[k])) {
					err = fmt.Errorf("prompt %d: %v, want %v", k, ch, want[k])
				}
				l.mu.Lock()
				l.reqs = append(l.reqs, Request{Start: start, Took: time.Since(start), Err: err})
				l.mu.Unlock()
			}
		})
	}
	return l
}

// Stop ends the load (a request in flight is abandoned, not counted) and returns every request.
func (l *Load) Stop() []Request {
	l.cancel()
	l.wg.Wait()
	return l.Requests(time.Time{}, time.Time{})
}

// Requests are the finished requests that started in [from, to) (zero times: no bound).
func (l *Load) Requests(from, to time.Time) []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Request
	for _, r := range l.reqs {
		if (from.IsZero() || !r.Start.Before(from)) && (to.IsZero() || r.Start.Before(to)) {
			out = append(out, r)
		}
	}
	return out
}

// Summary counts rs and their failures and gives latency percentiles; it reports the first
// failures to t.
func Summary(t testing.TB, phase string, rs []Request) (failed int, p50, p99, worst time.Duration) {
	t.Helper()
	lat := make([]time.Duration, 0, len(rs))
	for _, r := range rs {
		lat = append(lat, r.Took)
		if r.Err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("%s: request at %s: %v", phase, r.Start.Format("15:04:05.000"), r.Err)
			}
		}
	}
	p50, p99, worst = percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)
	t.Logf("%s: %d requests, %d failed, latency p50 %s p99 %s max %s", phase, len(rs), failed, ms(p50), ms(p99), ms(worst))
	return failed, p50, p99, worst
}

// ms formats d in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
