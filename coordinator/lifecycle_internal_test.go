package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFailsWhenItsEmbeddedEtcdStops: a coordinator whose embedded etcd stops under it fails at once.
func TestFailsWhenItsEmbeddedEtcdStops(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name, cfg.DataDir = "c", t.TempDir()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- c.Serve(context.Background()) }()
	c.etcd.Close()
	select {
	case err := <-served:
		if err == nil || !strings.HasPrefix(err.Error(), "embedded etcd:") {
			t.Fatalf("Serve returned %v, want the embedded etcd's failure", err)
		}
	case <-time.After(10 * time.Second):
		c.Close()
		t.Fatal("the coordinator did not fail with its etcd stopped")
	}
}
