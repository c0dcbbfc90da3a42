package client

import (
	"slices"
	"sync"
	"time"

	"github.com/pregate/pregate/routing"
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

// Slow-replica avoidance. Hedging alone does not keep a slow store (a congested link, a failing
// disk, a noisy neighbour) from stretching the fetches that start there: hedges are capped at a
// fraction of fetches, and the hedge delay is a high percentile that the slow store's own samples
// inflate. So the client also keeps a speed per store and, among a fetch's replicas, tries the
// ones much slower than the fastest last. Once a slow store's estimate is probeAfter old, one fetch
// tries it first again (one: every fetch that lists it first would otherwise wait for it until the
// first of them reports), so a store that recovers is used again.
const (
	speedAlpha  = 0.3             // EWMA weight of a new sample
	slowFactor  = 4.0             // slower than this × the fastest replica's speed: tried last
	probeAfter  = 5 * time.Second // a slow store's estimate older than this is refreshed by a fetch
	speedMemory = time.Minute     // estimates older than this are forgotten
)

type speedSample struct {
	secPerByte float64
	at         time.Time
	probed     time.Time // when a fetch was last let through to refresh a stale slow estimate
}

// storeSpeeds is the EWMA of each store's seconds per byte, from fetches it answered.
type storeSpeeds struct {
	mu sync.Mutex
	m  map[string]speedSample
}

// observe records that store delivered size bytes in d (or, with lowerBound, had not after d).
func (s *storeSpeeds) observe(store string, d time.Duration, size int64, lowerBound bool, now time.Time) {
	if size <= 0 || store == "" {
		return
	}
	v := d.Seconds() / float64(size)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]speedSample{}
	}
	old, ok := s.m[store]
	switch {
	case !ok || now.Sub(old.at) > speedMemory:
	case lowerBound:
		v = max(v, old.secPerByte) // it was at least this slow
	default:
		v = speedAlpha*v + (1-speedAlpha)*old.secPerByte
	}
	s.m[store] = speedSample{secPerByte: v, at: now}
}

// order returns reps with the replicas much slower than the fastest moved to the end, keeping
// the order otherwise (the caller's order spreads load); reps itself is not changed.
func (s *storeSpeeds) order(reps []routing.Replica, now time.Time) []routing.Replica {
	if len(reps) < 2 {
		return reps
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fastest := 0.0
	for _, r := range reps {
		if v, ok := s.m[r.Store]; ok && now.Sub(v.at) <= speedMemory && (fastest == 0 || v.secPerByte < fastest) {
			fastest = v.secPerByte
		}
	}
	if fastest == 0 {
		return reps
	}
	// A slow store whose estimate is stale gets one fetch (this one) to refresh it; the others
	// keep trying it last until that fetch reports, or for another probeAfter if it never does.
	probing := ""
	slow := func(r routing.Replica) bool {
		v, ok := s.m[r.Store]
		if !ok || v.secPerByte <= slowFactor*fastest {
			return false
		}
		if now.Sub(v.at) <= probeAfter || now.Sub(v.probed) <= probeAfter {
			return true
		}
		if probing == "" || probing == r.Store {
			probing = r.Store
			return false
		}
		return true
	}
	anySlow := slices.ContainsFunc(reps, slow)
	if probing != "" {
		v := s.m[probing]
		v.probed = now
		s.m[probing] = v
	}
	if !anySlow {
		return reps
	}
	out := make([]routing.Replica, 0, len(reps))
	for _, r := range reps {
		if !slow(r) {
			out = append(out, r)
		}
	}
	for _, r := range reps {
		if slow(r) {
			out = append(out, r)
		}
	}
	return out
}
