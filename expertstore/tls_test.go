package expertstore_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// testPKI is a cluster CA in a directory, issuing node certificates on 127.0.0.1.
type testPKI struct{ a *tlsutil.Authority }

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	a, err := tlsutil.NewAuthority(t.TempDir(), "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{a: a}
}

func (p *testPKI) node(t *testing.T, role, name string) *tlsutil.Reloader {
	t.Helper()
	r, err := p.a.Node(tlsutil.Identity{Role: role, Name: name}, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestMutualTLS runs two stores with TLS: a client with a certificate of the cluster's CA puts,
// fetches over the data plane and gRPC, and has one store copy from the other; a plaintext client
// and one of another CA get nothing, over either protocol.
func TestMutualTLS(t *testing.T) {
	pki := newPKI(t)
	var stores []*expertstore.Server
	for _, name := range []string{"store-a", "store-b"} {
		cfg := storeConfig(name, t.TempDir(), nil)
		cfg.Gossip = nil
		cfg.TLS = pki.node(t, tlsutil.RoleStore, name)
		s, err := expertstore.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores = append(stores, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	coord := newClient(t, client.Config{TLS: pki.node(t, tlsutil.RoleCoordinator, "coord-0")})
	data := expertBlob(t, "F32", 4, 128, 128, 21)
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	if _, _, err := coord.Put(ctx, replicaOf(stores[0]), data); err != nil {
		t.Fatalf("a Put over mutual TLS: %v", err)
	}
	if _, err := coord.Copy(ctx, replicaOf(stores[1]), ref, []routing.Replica{replicaOf(stores[0])}); err != nil {
		t.Fatalf("a store-to-store Copy over mutual TLS: %v", err)
	}
	workerTLS := pki.node(t, tlsutil.RoleWorker, "worker-0")
	for _, cl := range []*client.Client{
		newClient(t, client.Config{TLS: workerTLS}),
		newClient(t, client.Config{TLS: workerTLS, Transport: client.NewGRPCTransport(client.NewTLSConns(workerTLS), 64<<10)}),
	} {
		for _, s := range stores {
			dst := make([]byte, len(data))
			if err := cl.Fetch(ctx, ref, []routing.Replica{replicaOf(s)}, dst); err != nil || !slices.Equal(dst, data) {
				t.Errorf("a fetch from %s over mutual TLS: %v", s.NodeName(), err)
			}
		}
	}

	other := newPKI(t)
	short := client.Config{AttemptTimeout: 2 * time.Second}
	rogueTLS := other.node(t, tlsutil.RoleCoordinator, "rogue")
	for name, cl := range map[string]*client.Client{
		"plaintext":    newClient(t, short),
		"plain gRPC":   newClient(t, client.Config{AttemptTimeout: 2 * time.Second, Transport: client.NewGRPCTransport(client.NewConns(), 64<<10)}),
		"another CA":   newClient(t, client.Config{AttemptTimeout: 2 * time.Second, TLS: rogueTLS}),
		"another CA 2": newClient(t, client.Config{AttemptTimeout: 2 * time.Second, TLS: rogueTLS, Transport: client.NewGRPCTransport(client.NewTLSConns(rogueTLS), 64<<10)}),
	} {
		if err := cl.Fetch(ctx, ref, []routing.Replica{replicaOf(stores[0])}, make([]byte, len(data))); err == nil {
			t.Errorf("%s: a fetch succeeded", name)
		}
		other := expertBlob(t, "F32", 4, 16, 16, 22)
		if _, _, err := cl.Put(ctx, replicaOf(stores[0]), other); err == nil {
			t.Errorf("%s: a Put succeeded", name)
		}
	}
	// A raw plaintext data-plane request gets no answer: the connection ends in the handshake.
	c, err := net.Dial("tcp", stores[0].DataAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(dataplane.Request{Op: dataplane.OpFetch, Digest: ref.Digest, Length: ref.Size}.Append(nil))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	if n >= dataplane.ResponseSize && buf[0] == dataplane.StatusOK {
		t.Error("a plaintext data-plane request was answered")
	}
	if st := stores[0].Stats(); st.Blobs != 1 {
		t.Errorf("store-a holds %d blobs, want the 1 put over TLS", st.Blobs)
	}
}
