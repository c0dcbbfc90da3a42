package coordinator_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
)

// TestEtcdAuthorization: with TLS, etcd serves only certificates of the cluster's CA, and each
// role reads and writes what docs/SECURITY.md says — a worker cannot rewrite a manifest or drain
// a store, a store's certificate reads nothing, an admin drains but places nothing.
func TestEtcdAuthorization(t *testing.T) {
	lc := startClusterWith(t, cluster.Config{Stores: 1, Replicas: 1, TLS: true})
	prefix := lc.Placement().Prefix()
	dial := func(r *tlsutil.Reloader) *clientv3.Client {
		t.Helper()
		cli, err := placement.Dial(lc.EtcdEndpoints(), r)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	as := map[string]*clientv3.Client{}
	for _, role := range []string{tlsutil.RoleWorker, tlsutil.RoleImporter, tlsutil.RoleAdmin, tlsutil.RoleStore} {
		r, err := lc.TLS(role, role+"-x")
		if err != nil {
			t.Fatal(err)
		}
		as[role] = dial(r)
	}
	// The coordinator turns authentication on shortly after it starts.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := as[tlsutil.RoleStore].Get(ctx, prefix, clientv3.WithPrefix())
		cancel()
		if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd authentication never came on: a store's certificate reads the cluster (%v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	type access struct {
		role, key string
		write     bool
		allowed   bool
	}
	cases := []access{
		{tlsutil.RoleWorker, prefix + "models/m", false, true},
		{tlsutil.RoleWorker, prefix + "models/m", true, false},
		{tlsutil.RoleWorker, prefix + "stores/s", true, false},
		{tlsutil.RoleWorker, prefix + "drain/store-0", true, false},
		{tlsutil.RoleWorker, prefix + "workers/w", true, true},
		{tlsutil.RoleImporter, prefix + "models/m", true, true},
		{tlsutil.RoleImporter, prefix + "imports/m", true, true},
		{tlsutil.RoleImporter, prefix + "stores/s", true, false},
		{tlsutil.RoleImporter, prefix + "coordinator/leader", true, false},
		{tlsutil.RoleAdmin, prefix + "drain/store-9", true, true},
		{tlsutil.RoleAdmin, prefix + "models/m", true, false},
		{tlsutil.RoleAdmin, prefix + "stores/s", false, true},
		{tlsutil.RoleStore, prefix + "stores/s", true, false},
		{tlsutil.RoleStore, prefix + "models/m", false, false},
		{tlsutil.RoleWorker, "/elsewhere", false, false},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		if c.write {
			_, err = as[c.role].Put(ctx, c.key, "x")
		} else {
			_, err = as[c.role].Get(ctx, c.key)
		}
		cancel()
		denied := errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserNotFound)
		switch {
		case c.allowed && err != nil:
			t.Errorf("%s: %s %s refused: %v", c.role, map[bool]string{true: "write", false: "read"}[c.write], c.key, err)
		case !c.allowed && !denied:
			t.Errorf("%s: %s %s answered %v, want permission denied", c.role, map[bool]string{true: "write", false: "read"}[c.write], c.key, err)
		}
	}
	// Without a certificate of the cluster's CA, etcd does not answer at all.
	plain, err := clientv3.New(clientv3.Config{Endpoints: lc.EtcdEndpoints(), DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := plain.Get(ctx, prefix, clientv3.WithPrefix()); err == nil {
		t.Error("a client without a certificate read the cluster's keys")
	}
	// Nor with a coordinator's certificate of another CA.
	rogue := newHAPKI(t).node(t, tlsutil.RoleCoordinator, "rogue")
	if _, err := dial(rogue).Put(ctx, prefix+"models/m", "forged"); err == nil {
		t.Error("a coordinator certificate of another CA wrote a manifest")
	}
	// The drain marks are untouched by the refused writes, and the manifest key holds nothing.
	if drains, err := lc.Placement().Drains(ctxFor(t, 5*time.Second)); err != nil || drains["store-0"] {
		t.Errorf("drains after the refused writes: %v, %v", drains, err)
	}
}
