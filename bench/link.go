package bench

import (
	"context"
	"sync"
	"time"

	"github.com/pregate/pregate/routing"
	"github.com/pregate/pregate/worker"
)

// shapeLink returns f with its transfers paced at bytesPerSecond in all: one link shared by every
// fetch, first come first served, as the worker's NIC or PCIe link is. A fetch of n bytes that finds
// the link free at t ends at t + n/bytesPerSecond, or when the real transfer does if that is later.
// It gives the store → worker link a real system's speed relative to this machine's compute
// (worker.Config.Link). (x/time/rate's token bucket models a rate cap with bursts, not a FIFO link
// whose finish times are known when a transfer starts; this is the ten lines the model needs.)
func shapeLink(f worker.Fetcher, bytesPerSecond float64) worker.Fetcher {
	return &shapedFetcher{Fetcher: f, bps: bytesPerSecond}
}

type shapedFetcher struct {
	worker.Fetcher
	bps  float64
	mu   sync.Mutex
	free time.Time // when the link has sent everything queued so far
}

// Fetch implements worker.Fetcher.
func (s *shapedFetcher) Fetch(ctx context.Context, k routing.ExpertKey, dst []byte) error {
	s.mu.Lock()
	now := time.Now()
	if s.free.Before(now) {
		s.free = now
	}
	s.free = s.free.Add(time.Duration(float64(len(dst)) / s.bps * float64(time.Second)))
	done := s.free
	s.mu.Unlock()
	if err := s.Fetcher.Fetch(ctx, k, dst); err != nil {
		return err
	}
	t := time.NewTimer(time.Until(done))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
