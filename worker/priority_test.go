package worker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// TestComputePriority runs a worker whose compute threads are raised: the scheduler's thread and
// the CPU pool's worker run at high priority while it serves (with the golden tokens), and no
// thread is left at it once the worker is closed.
func TestComputePriority(t *testing.T) {
	if err := compute.CheckPriority(compute.PriorityHigh); err != nil {
		t.Skipf("raising a thread is not allowed here: %v", err)
	}
	const fx = "switch-tiny"
	lc := startCluster(t, fx)
	before, err := compute.ThreadsAt(compute.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	cfg := worker.DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.Model, cfg.Mode = "w-prio", lc.EtcdEndpoints(), fx, worker.ModeOnDemand
	cfg.ExpertCache, cfg.HTTPAddr, cfg.DataDir, cfg.Threads = 64<<20, "127.0.0.1:0", t.TempDir(), 2
	cfg.ComputePriority = compute.PriorityHigh
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	prompts, want := goldenPrompts(t, fixture(fx))
	c := complete(t, w.HTTPAddr(), map[string]any{"model": fx, "prompt": prompts[:1], "max_tokens": 10, "temperature": 0, "return_token_ids": true})
	if len(c.Choices) != 1 || !slices.Equal(c.Choices[0].TokenIDs, want[0]) {
		t.Fatalf("got %+v, want the golden %v", c.Choices, want[0])
	}
	during, err := compute.ThreadsAt(compute.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	if len(during) < len(before)+2 {
		t.Errorf("%d threads at high priority while serving, %d before: want the scheduler's and the pool's worker's", len(during), len(before))
	}
	w.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, _ := compute.ThreadsAt(compute.PriorityHigh)
		if len(after) <= len(before) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threads still at high priority after Close, %d before", len(after), len(before))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
