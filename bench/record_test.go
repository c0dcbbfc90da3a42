package bench

import (
	"slices"
	"testing"
	"time"
)

// TestRecorder drives the recorder as the pipeline does (Routed per MoE block, StepEnded per step)
// with made-up times: it must skip the steps before startAfter's, reset the counters once when it
// starts, and sample a block only up to the next block of its step or the step's end.
func TestRecorder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	r := newRecorder()
	resets := 0
	r.startAfter(2, func() { resets++ })

	// Two prefill steps: not recorded.
	for step := range 2 {
		base := 100 * step
		r.Routed(0, ms(base))
		r.Routed(1, ms(base+5))
		r.StepEnded(ms(base + 9))
	}
	if resets != 1 {
		t.Fatalf("%d resets after the prefill, want 1", resets)
	}
	// Decode steps: block 0 → 1 → end; then one whose blocks do not follow one another (a block
	// routed twice, then a block that is not its successor); then one that routes no block.
	r.Routed(0, ms(200))
	r.Routed(1, ms(203))
	r.StepEnded(ms(210))
	r.Routed(0, ms(300))
	r.Routed(0, ms(301)) // same block again: no sample for it yet
	r.Routed(2, ms(304)) // not block 1: 0's sample is dropped
	r.StepEnded(ms(308))
	r.StepEnded(ms(400))
	r.Routed(-1, ms(401)) // not a block: ignored
	since := r.stop()
	r.Routed(0, ms(500)) // after stop: not recorded
	r.Routed(1, ms(501))
	r.StepEnded(ms(502))

	if !since.Equal(ms(109)) {
		t.Errorf("recording since %v, want the end of the second step (%v)", since, ms(109))
	}
	want := [][]time.Duration{{3 * time.Millisecond}, {7 * time.Millisecond}, {4 * time.Millisecond}}
	got := r.blockLatencies()
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("latencies %v, want %v", got, want)
	}
	if resets != 1 {
		t.Errorf("%d resets, want 1", resets)
	}
}

func TestRecorderStartsAtOnce(t *testing.T) {
	r := newRecorder()
	started := false
	r.startAfter(0, func() { started = true })
	if !started {
		t.Fatal("startAfter(0) did not start")
	}
	t0 := time.Now()
	r.Routed(0, t0)
	r.StepEnded(t0.Add(time.Millisecond))
	if got := r.blockLatencies(); len(got) != 1 || !slices.Equal(got[0], []time.Duration{time.Millisecond}) {
		t.Errorf("latencies %v, want [[1ms]]", got)
	}
}
