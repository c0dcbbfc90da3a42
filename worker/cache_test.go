package worker

import (
	"context"
	"testing"

	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/routing"
)

// TestAbandonedFetchFreesItsBytes: a prefetch abandoned (its last want dropped) whose fetch still
// completes, after get has replaced its entry, gives its bytes back; before, they leaked and every
// later reservation waited for space that never freed.
func TestAbandonedFetchFreesItsBytes(t *testing.T) {
	dev := NewCPU()
	t.Cleanup(func() { dev.Close() })
	k := routing.ExpertKey{Block: 2, Expert: 3}
	c := NewCache(100, nil)
	old, created := c.get(k, 100)
	if !created {
		t.Fatal("first get did not create")
	}
	c.setCancel(old, func() {})
	if err := c.reserve(context.Background(), old, dev.Alloc); err != nil {
		t.Fatal(err)
	}
	c.unpin(old) // the want is dropped while the fetch runs: abandoned
	repl, created := c.get(k, 100)
	if !created || repl == old {
		t.Fatal("get did not replace the abandoned entry")
	}
	c.fill(old, &engine.ExpertWeights{}, nil) // the fetch finished before the cancel reached it
	if got := c.Stats().Used; got != 0 {
		t.Fatalf("used %d bytes after the abandoned fetch completed, want 0", got)
	}
	if err := c.reserve(context.Background(), repl, dev.Alloc); err != nil {
		t.Fatal(err)
	}
}
