package worker_test

import (
	"slices"
	"testing"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// TestComputePriority runs a worker whose compute thread is raised: the scheduler's thread runs at
// high priority while it serves (with the golden tokens), and no thread is left at it once the
// worker is closed. (One thread: more must leave a core to the fetch path, compute's tests.)
func TestComputePriority(t *testing.T) {
	if err := compute.CheckPriority(compute.PriorityHigh, 1); err != nil {
		t.Skipf("raising a thread is not allowed here: %v", err)
	}
	const fx = "switch-tiny"
	lc := startCluster(t, fx)
	before, err := compute.ThreadsAt(compute.PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	prompts, want := goldenPrompts(t, fixture(fx))
	// serve runs a worker with threads compute threads at high priority, checks a completion, and
	// returns the worker and how many threads are at high priority while it serves.
	serve := func(threads int) (*worker.Worker, int) {
		w := startWorkerWith(t, lc, fx, worker.ModeOnDemand, 64<<20, true, func(c *worker.Config) {
			c.Threads, c.ComputePriority = threads, compute.PriorityHigh
		})
		c := complete(t, w.HTTPAddr(), map[string]any{"model": fx, "prompt": prompts[:1], "max_tokens": 10, "temperature": 0, "return_token_ids": true})
		if len(c.Choices) != 1 || !slices.Equal(c.Choices[0].TokenIDs, want[0]) {
			t.Fatalf("got %+v, want the golden %v", c.Choices, want[0])
		}
		at, err := compute.ThreadsAt(compute.PriorityHigh)
		if err != nil {
			t.Fatal(err)
		}
		return w, len(at)
	}
	// Compute threads on every core leave none to the fetch path: not raised.
	w, during := serve(0)
	if during != len(before) {
		t.Errorf("%d threads at high priority with compute on every core, %d before: want none raised", during, len(before))
	}
	w.Close()
	w, during = serve(1)
	if during < len(before)+1 {
		t.Errorf("%d threads at high priority while serving, %d before: want the scheduler's", during, len(before))
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
