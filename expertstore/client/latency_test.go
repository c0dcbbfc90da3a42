package client

import (
	"testing"
	"time"
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
