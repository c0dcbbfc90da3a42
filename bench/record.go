package bench

import (
	"slices"
	"sync"
	"time"
)

// recorder is the worker's Tracer in a run: it records each MoE block's latency, the time from the
// block's routing to the next MoE block's (the MoE block and the dense layers up to the next one),
// or to the end of the step for the last, from the end of the step that startAfter names on. It
// counts the pipeline's steps rather than its callers' calls, so that the prefill is skipped in step
// with the engine whatever the scheduler batches together.
type recorder struct {
	mu        sync.Mutex
	skip      int    // steps to go before recording starts
	onStart   func() // called (outside mu) when recording starts
	recording bool
	since     time.Time // when recording started
	last      int       // block of the latest Routed in this step, -1 at a step's start
	lastAt    time.Time
	latencies [][]time.Duration // per block
}

func newRecorder() *recorder { return &recorder{last: -1} }

// startAfter starts recording once n more steps have ended (at once if n ≤ 0), first calling
// onStart (nil: none) on the goroutine that ended the step: the run resets the pipeline's counters
// there, so that they count what the latencies do.
func (r *recorder) startAfter(n int, onStart func()) {
	r.mu.Lock()
	r.skip, r.onStart = n, onStart
	start := n <= 0
	if start {
		r.startLocked(time.Now())
	}
	r.mu.Unlock()
	if start && onStart != nil {
		onStart()
	}
}

func (r *recorder) startLocked(at time.Time) {
	r.recording, r.since, r.skip = true, at, 0
	clear(r.latencies)
}

// stop ends recording and returns when it started (zero if it had not).
func (r *recorder) stop() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = false
	return r.since
}

// blockLatencies returns the recorded latencies of each MoE block.
func (r *recorder) blockLatencies() [][]time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([][]time.Duration, len(r.latencies))
	for i, l := range r.latencies {
		out[i] = slices.Clone(l)
	}
	return out
}

// Routed implements worker.Tracer.
func (r *recorder) Routed(block int, at time.Time) {
	if block < 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recording {
		r.mark(block, at)
	}
}

// StepEnded implements worker.Tracer.
func (r *recorder) StepEnded(at time.Time) {
	r.mu.Lock()
	if r.recording {
		r.mark(-1, at)
	}
	r.last = -1
	start := false
	if r.skip > 0 {
		if r.skip--; r.skip == 0 {
			r.startLocked(at)
			start = true
		}
	}
	onStart := r.onStart
	r.mu.Unlock()
	if start && onStart != nil {
		onStart()
	}
}

// mark ends the latency sample of the previous block of this step (when block follows it, or the
// step ends: block −1) and starts block's. Caller holds r.mu.
func (r *recorder) mark(block int, at time.Time) {
	if r.last >= 0 && (block < 0 || block == r.last+1) {
		if n := r.last + 1; len(r.latencies) < n {
			r.latencies = append(r.latencies, make([][]time.Duration, n-len(r.latencies))...)
		}
		r.latencies[r.last] = append(r.latencies[r.last], at.Sub(r.lastAt))
	}
	r.last, r.lastAt = block, at
}
