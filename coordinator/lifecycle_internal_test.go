package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/routing"
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

// TestVerifyCopy: a replica is marked ready only when its store answers Has for the digest, so a
// store that answered a Copy without keeping the blob is not believed.
func TestVerifyCopy(t *testing.T) {
	sc := expertstore.DefaultConfig()
	sc.NodeName, sc.ListenAddr = "s", "127.0.0.1:0"
	s, err := expertstore.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := &Coordinator{stores: client.New(client.DefaultConfig())}
	defer c.stores.Close()
	r := routing.Replica{Store: "s", GRPCAddr: s.Addr(), DataAddr: s.DataAddr()}
	data := []byte("expert bytes")
	ctx := context.Background()
	if err := c.verifyCopy(ctx, r, blob.Sum(data)); err == nil || !strings.Contains(err.Error(), "does not hold it") {
		t.Fatalf("verifyCopy of a blob the store lacks = %v", err)
	}
	if _, _, err := c.stores.Put(ctx, r, data); err != nil {
		t.Fatal(err)
	}
	if err := c.verifyCopy(ctx, r, blob.Sum(data)); err != nil {
		t.Fatalf("verifyCopy of a blob the store holds = %v", err)
	}
}
