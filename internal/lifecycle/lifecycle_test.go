package lifecycle

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestGroupFailureAndStop(t *testing.T) {
	g := NewGroup()
	boom := errors.New("listener died")
	g.Go("normal", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	g.Go("server", func(context.Context) error { return boom })
	select {
	case <-g.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("Failed not closed after a goroutine returned an error")
	}
	if err := g.Err(); !errors.Is(err, boom) || err.Error() != "server: listener died" {
		t.Fatalf("Err() = %v, want the named failure", err)
	}
	g.Fail(errors.New("second")) // the first failure is kept
	if !errors.Is(g.Err(), boom) {
		t.Fatalf("Err() = %v after a second failure", g.Err())
	}
	g.Stop()
	g.Stop() // idempotent
	if g.Context().Err() == nil {
		t.Fatal("context live after Stop")
	}
}

func TestGroupNormalStopIsNotAFailure(t *testing.T) {
	g := NewGroup()
	started := make(chan struct{})
	g.Go("worker", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return errors.New("interrupted") // an error while stopping is not a failure
	})
	<-started
	g.Stop()
	select {
	case <-g.Failed():
		t.Fatal("a stop counted as a failure")
	default:
	}
	if g.Err() != nil {
		t.Fatalf("Err() = %v after a normal stop", g.Err())
	}
	g.Fail(errors.New("late")) // after Stop: ignored
	if g.Err() != nil {
		t.Fatal("a failure after Stop was recorded")
	}
}

type component struct {
	*Group
	closed int
}

func (c *component) Close() error { c.closed++; c.Stop(); return nil }

func TestServe(t *testing.T) {
	// Stopped by its context: nil.
	c := &component{Group: NewGroup()}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Serve(ctx, c); err != nil || c.closed != 1 {
		t.Fatalf("Serve after cancel = %v, closed %d", err, c.closed)
	}
	// Failed: the failure, and closed.
	c = &component{Group: NewGroup()}
	boom := errors.New("etcd gone")
	c.Go("session", func(context.Context) error { return boom })
	if err := Serve(context.Background(), c); !errors.Is(err, boom) || c.closed != 1 {
		t.Fatalf("Serve after a failure = %v, closed %d", err, c.closed)
	}
}
