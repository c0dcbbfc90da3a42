package coordinator_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/internal/embedetcd"
)

// TestFailsWhenEtcdIsGoneForGood stops the etcd a leading coordinator uses: the coordinator loses
// its session, keeps trying for EtcdGiveUp, then fails — Serve returns why, for the process to exit.
func TestFailsWhenEtcdIsGoneForGood(t *testing.T) {
	ec := embedetcd.DefaultConfig()
	ec.Dir, ec.ClientURL, ec.PeerURL, ec.UnsafeNoFsync = filepath.Join(t.TempDir(), "etcd"), "", "", true
	etcd, err := embedetcd.Start(ec)
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	cfg := coordinator.DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.SessionTTL, cfg.EtcdGiveUp, cfg.Interval = "c", etcd.Endpoints(), 1, 2*time.Second, 100*time.Millisecond
	co, err := coordinator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- co.Serve(context.Background()) }()
	for !co.IsLeader() {
		time.Sleep(20 * time.Millisecond)
	}
	if co.Err() != nil {
		t.Fatalf("Err() = %v while healthy", co.Err())
	}
	etcd.Close()
	stopped := time.Now()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "etcd unreachable for 2s") {
			t.Fatalf("Serve returned %v, want etcd unreachable", err)
		}
		t.Logf("failed %v after etcd stopped: %v", time.Since(stopped).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		co.Close()
		t.Fatal("the coordinator did not fail with etcd gone")
	}
}
