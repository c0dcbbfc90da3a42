package client

import (
	"slices"
	"sync"
	"time"
)

// latency keeps the recent fetch times per byte, to hedge a fetch once it runs slower than the
// 95th percentile of what the client has seen.
type latency struct {
	mu      sync.Mutex
	samples [256]float64 // seconds per byte
	n       int
}

const minSamples = 20

func (l *latency) observe(d time.Duration, size int64) {
	if size <= 0 {
		return
	}
	l.mu.Lock()
	l.samples[l.n%len(l.samples)] = d.Seconds() / float64(size)
	l.n++
	l.mu.Unlock()
}

// hedgeDelay is how long to wait for a fetch of size bytes before hedging; false until enough
// fetches were seen to know.
func (l *latency) hedgeDelay(size int64, floor time.Duration) (time.Duration, bool) {
	l.mu.Lock()
	n := min(l.n, len(l.samples))
	if n < minSamples {
		l.mu.Unlock()
		return 0, false
	}
	s := slices.Clone(l.samples[:n])
	l.mu.Unlock()
	slices.Sort(s)
	p95 := s[(n*95)/100]
	return max(floor, time.Duration(p95*float64(size)*float64(time.Second))), true
}
