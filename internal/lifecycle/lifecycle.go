// Package lifecycle is how pregate's daemons (the store, the coordinator, the worker and its HTTP
// scheduler) own their goroutines and report failure, the one way for all of them:
//
//	g := lifecycle.NewGroup()
//	g.Go("grpc", func(ctx context.Context) error { return srv.Serve(lis) }) // an error here is fatal
//	…
//	g.Failed() / g.Err()   a fatal internal failure: the owner (a `pregate` command) exits with it
//	g.Stop()               cancel every goroutine's context and wait for them (idempotent)
//
// A goroutine started with Go returns nil when it ends normally (its context was cancelled, its
// listener closed by a shutdown); any other error is the component failing, and the first one is
// kept. errgroup is close but its Wait blocks: a daemon has to answer Err without blocking while it
// serves, and to tell a failure from a normal stop.
package lifecycle

import (
	"context"
	"fmt"
	"sync"
)

// Group owns a component's goroutines.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	err     error
	failed  chan struct{} // closed by the first Fail
	stopped bool
}

// NewGroup returns an empty group whose context is live until Stop.
func NewGroup() *Group {
	ctx, cancel := context.WithCancel(context.Background())
	return &Group{ctx: ctx, cancel: cancel, failed: make(chan struct{})}
}

// Context is cancelled when the group stops.
func (g *Group) Context() context.Context { return g.ctx }

// Go runs f on a goroutine the group owns. f must return once ctx is cancelled. A non-nil error
// from f, unless the group is stopping, is the component's fatal failure (Fail), named by name.
func (g *Group) Go(name string, f func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(g.ctx); err != nil && g.ctx.Err() == nil {
			g.Fail(fmt.Errorf("%s: %w", name, err))
		}
	}()
}

// Fail records a fatal internal failure; the first one is kept and closes Failed. It does not stop
// the group: the owner decides (a daemon's command closes the component and exits with Err).
func (g *Group) Fail(err error) {
	if err == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil && !g.stopped {
		g.err = err
		close(g.failed)
	}
}

// Failed is closed once the component has failed.
func (g *Group) Failed() <-chan struct{} { return g.failed }

// Err returns the component's fatal failure, nil while it is healthy (and after a normal stop).
func (g *Group) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Cancel begins stopping: it cancels the group's context without waiting, for a component that
// must shut other things down (an HTTP server whose handlers wait on it) before its goroutines can
// end. From here on, failures are ignored (tearing down is not failing).
func (g *Group) Cancel() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
}

// Stop cancels the group's context and waits for its goroutines. Idempotent.
func (g *Group) Stop() {
	g.Cancel()
	g.wg.Wait()
}

// Component is what a daemon offers its owner.
type Component interface {
	Failed() <-chan struct{}
	Err() error
	Close() error
}

// Serve blocks until ctx ends or c fails, then closes c. It returns c's failure, or the error
// closing it after a normal stop.
func Serve(ctx context.Context, c Component) error {
	select {
	case <-ctx.Done():
		return c.Close()
	case <-c.Failed():
		err := c.Err()
		c.Close() //nolint:errcheck // the failure is the error to report
		return err
	}
}
