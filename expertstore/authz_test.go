package expertstore_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// TestRoleAuthorization calls every store operation with a certificate of every role and checks
// the answer against the policy (docs/SECURITY.md): a refused call is PermissionDenied and changes
// nothing; an allowed one works.
func TestRoleAuthorization(t *testing.T) {
	pki := newPKI(t)
	start := func(role, name, dir string) *expertstore.Server {
		cfg := storeConfig(name, dir, nil)
		cfg.Gossip = nil
		cfg.TLS = pki.node(t, role, name)
		s, err := expertstore.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := start(tlsutil.RoleStore, "store-a", t.TempDir()), start(tlsutil.RoleStore, "store-b", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	short := func(r *tlsutil.Reloader) *client.Client {
		return newClient(t, client.Config{TLS: r, AttemptTimeout: 3 * time.Second})
	}
	coord := short(pki.node(t, tlsutil.RoleCoordinator, "coord-0"))
	data := expertBlob(t, "F32", 4, 64, 64, 31)
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	if _, _, err := coord.Put(ctx, replicaOf(a), data); err != nil {
		t.Fatal(err)
	}

	type ops struct{ put, del, copy, list, has, stats, fetch bool }
	want := map[string]ops{
		tlsutil.RoleCoordinator: {put: true, del: true, copy: true, list: true, has: true, stats: true, fetch: true},
		tlsutil.RoleImporter:    {put: true, has: true, stats: true, fetch: true},
		tlsutil.RoleWorker:      {has: true, stats: true, fetch: true},
		tlsutil.RoleStore:       {stats: true, fetch: true},
		tlsutil.RoleAdmin:       {list: true, has: true, stats: true},
	}
	for role, w := range want {
		if role == tlsutil.RoleCoordinator {
			continue // it did the Put above; its Delete and Copy are checked last
		}
		tlsCfg := pki.node(t, role, role+"-0")
		cl := short(tlsCfg)
		check := func(op string, allowed bool, err error) {
			t.Helper()
			switch {
			case allowed && err != nil:
				t.Errorf("%s: %s refused: %v", role, op, err)
			case !allowed && !errors.Is(err, storepb.ErrDenied):
				t.Errorf("%s: %s answered %v, want permission denied", role, op, err)
			}
		}
		other := expertBlob(t, "F32", 4, 8, 8, 40+uint64(len(role)))
		_, _, err := cl.Put(ctx, replicaOf(b), other)
		check("Put", w.put, err)
		_, err = cl.Delete(ctx, replicaOf(a), ref.Digest)
		check("Delete", w.del, err)
		_, err = cl.Copy(ctx, replicaOf(b), ref, []routing.Replica{replicaOf(a)})
		check("Copy", w.copy, err)
		_, err = cl.List(ctx, replicaOf(a), "")
		check("List", w.list, err)
		_, err = cl.Has(ctx, replicaOf(a), ref.Digest)
		check("Has", w.has, err)
		_, err = cl.Stats(ctx, replicaOf(a))
		check("Stats", w.stats, err)
		for name, fc := range map[string]*client.Client{
			"Fetch (data plane)": cl,
			"Fetch (gRPC)": newClient(t, client.Config{TLS: tlsCfg, AttemptTimeout: 3 * time.Second,
				Transport: client.NewGRPCTransport(client.NewTLSConns(tlsCfg), 64<<10)}),
		} {
			dst := make([]byte, len(data))
			err := fc.Fetch(ctx, ref, []routing.Replica{replicaOf(a)}, dst)
			check(name, w.fetch, err)
			if err == nil && !slices.Equal(dst, data) {
				t.Errorf("%s: %s returned other bytes", role, name)
			}
		}
	}
	if a.Stats().Blobs != 1 || b.Stats().Blobs != 1 { // the coordinator's blob, the importer's Put
		t.Errorf("store-a holds %d blobs (want 1), store-b %d (want 1)", a.Stats().Blobs, b.Stats().Blobs)
	}

	// A Copy's source must be a store: a node of the cluster serving with another role's
	// certificate (a worker's, say) is not read from, even when the coordinator names it.
	// It holds a blob in its data dir from when it ran as a store; clients would not even Put to
	// it now.
	dir := t.TempDir()
	was := start(tlsutil.RoleStore, "store-x", dir)
	bad := expertBlob(t, "F32", 4, 64, 64, 33)
	if _, _, err := coord.Put(ctx, replicaOf(was), bad); err != nil {
		t.Fatal(err)
	}
	was.Close()
	impostor := start(tlsutil.RoleWorker, "store-x", dir)
	if _, _, err := coord.Put(ctx, replicaOf(impostor), bad); err == nil {
		t.Error("a Put to a node serving with a worker's certificate succeeded")
	}
	badRef := client.Ref{Digest: blob.Sum(bad), Size: int64(len(bad))}
	if _, err := coord.Copy(ctx, replicaOf(b), badRef, []routing.Replica{replicaOf(impostor)}); err == nil {
		t.Error("store-b copied from a node whose certificate is a worker's")
	}
	if has, err := coord.Has(ctx, replicaOf(b), badRef.Digest); err != nil || has[0] {
		t.Errorf("store-b holds the impostor's blob (%v, %v)", has, err)
	}
	// The coordinator's own writes work.
	if _, err := coord.Copy(ctx, replicaOf(b), ref, []routing.Replica{replicaOf(a)}); err != nil {
		t.Errorf("coordinator: Copy: %v", err)
	}
	if _, err := coord.Delete(ctx, replicaOf(a), ref.Digest); err != nil {
		t.Errorf("coordinator: Delete: %v", err)
	}
}
