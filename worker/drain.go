package worker

import (
	"errors"
	"sync"
	"time"
)

// errShuttingDown is /ready's answer once shutdown begins.
var errShuttingDown = errors.New("shutting down")

// drainer counts the completions in flight and, once shutdown begins, refuses new ones: a worker
// told to stop (SIGTERM, a rolling update) finishes what it accepted instead of failing it, while
// its /ready answer takes it out of the load balancer's rotation.
type drainer struct {
	mu       sync.Mutex
	closing  bool
	inflight int
	idle     chan struct{} // closed when closing and inflight reaches 0
}

// enter admits a request, or reports false once shutdown began.
func (d *drainer) enter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return false
	}
	d.inflight++
	return true
}

// leave ends an admitted request.
func (d *drainer) leave() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight--
	if d.closing && d.inflight == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
}

func (d *drainer) draining() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closing
}

// wait begins shutdown and waits up to timeout for the requests in flight to end; it returns how
// many are still running.
func (d *drainer) wait(timeout time.Duration) int {
	d.mu.Lock()
	d.closing = true
	if d.inflight == 0 || timeout <= 0 {
		n := d.inflight
		d.mu.Unlock()
		return n
	}
	idle := make(chan struct{})
	d.idle = idle
	d.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inflight
}
