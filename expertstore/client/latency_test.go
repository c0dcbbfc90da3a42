package client

import (
	"testing"
	"time"

	"github.com/pregate/pregate/routing"
)

func TestHedgeDelayFollowsObservedLatency(t *testing.T) {
	var l latency
	if _, ok := l.hedgeDelay(1<<20, time.Millisecond); ok {
		t.Fatal("hedge delay known before any fetch")
	}
	// 100 fetches of 1 MiB: 95 take 1 ms, 5 take 10 ms.
	for i := range 100 {
		d := time.Millisecond
		if i%20 == 0 {
			d = 10 * time.Millisecond
		}
		l.observe(d, 1<<20)
	}
	got, ok := l.hedgeDelay(2<<20, 100*time.Microsecond)
	if !ok {
		t.Fatal("no hedge delay after 100 fetches")
	}
	// p95 per byte is the slow fetches' (10 ms per MiB): 20 ms for 2 MiB.
	if got < 19*time.Millisecond || got > 21*time.Millisecond {
		t.Fatalf("hedge delay for 2 MiB = %v, want about 20ms", got)
	}
	if got, _ := l.hedgeDelay(1, 5*time.Millisecond); got != 5*time.Millisecond {
		t.Fatalf("floor not applied: %v", got)
	}
}

func TestStoreSpeedsOrder(t *testing.T) {
	reps := []routing.Replica{{Store: "a"}, {Store: "b"}, {Store: "c"}}
	names := func(rs []routing.Replica) string {
		var s string
		for _, r := range rs {
			s += r.Store
		}
		return s
	}
	var s storeSpeeds
	now := time.Unix(1000, 0)
	if got := names(s.order(reps, now)); got != "abc" {
		t.Fatalf("nothing known: %s", got)
	}
	s.observe("a", 100*time.Millisecond, 1<<20, false, now) // 10× slower than b
	s.observe("b", 10*time.Millisecond, 1<<20, false, now)
	s.observe("c", 20*time.Millisecond, 1<<20, false, now) // 2×: not slow
	if got := names(s.order(reps, now)); got != "bca" {
		t.Errorf("a slow: %s, want bca", got)
	}
	if names(reps) != "abc" {
		t.Error("order changed its argument")
	}
	// The slow store's estimate ages: one fetch tries it first again to refresh it, the next ones
	// still try it last until that fetch reports.
	later := now.Add(probeAfter + time.Second)
	if got := names(s.order(reps, later)); got != "abc" {
		t.Errorf("after %v: %s, want abc (a probed again)", probeAfter, got)
	}
	if got := names(s.order(reps, later)); got != "bca" {
		t.Errorf("a second fetch during the probe: %s, want bca", got)
	}
	// It recovered: fast samples bring its EWMA down.
	for range 10 {
		s.observe("a", 10*time.Millisecond, 1<<20, false, later)
	}
	if got := names(s.order(reps, later)); got != "abc" {
		t.Errorf("a recovered: %s, want abc", got)
	}
	// A hedge that beat a replica is a lower bound: it can only make the estimate slower.
	s.observe("b", time.Second, 1<<20, true, later)
	if got := names(s.order(reps, later)); got != "acb" {
		t.Errorf("b beaten by a hedge: %s, want acb", got)
	}
}
