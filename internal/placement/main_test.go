package placement

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/pregate/pregate/internal/embedetcd"
)

// testClient is a client of the package's one embedded etcd (TestMain).
var testClient *clientv3.Client

func TestMain(m *testing.M) {
	code := runTests(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "placement-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg := embedetcd.DefaultConfig()
	cfg.Dir = dir
	cfg.ClientURL, cfg.PeerURL = "", ""
	cfg.StartTimeout = 10 * time.Second
	cfg.UnsafeNoFsync = true
	srv, err := embedetcd.Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	testClient, err = clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testClient.Close()
	return m.Run()
}

// clusters numbers the clusters of newStore, so that -count=N runs start empty.
var clusters atomic.Int64

// newStore returns a Store on a cluster of the test's own, and a context bounding the test.
func newStore(t *testing.T) (*Store, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return New(testClient, fmt.Sprintf("%s-%d", t.Name(), clusters.Add(1))), ctx
}
