//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pregate/pregate/internal/golden"
)

// testCoordinator: timers short enough that a dead store's blobs move within seconds, long enough
// that a loaded 2-core machine does not flap.
var testCoordinator = CoordinatorOptions{Replicas: 2, DeadGrace: 5 * time.Second, Interval: 2 * time.Second}

// Cluster is a coordinator (with its etcd), stores and a client host for the CLI, each a node of
// one network. Workers are added by the scenarios (StartWorker).
type Cluster struct {
	Net    *Network
	Coord  *Node
	Client *Node // runs pregate import and pregate status, as a Job would
	Stores []*Node
	// StoreProcs are the stores' processes, by index of Stores (the latest started).
	StoreProcs []*Proc
}

// StartCluster starts a coordinator and n stores (1 GiB each), waits until the leader sees every
// store alive, and imports the fixtures (testdata/<name>, imported under that name).
func StartCluster(t testing.TB, n int, fixtures ...string) *Cluster {
	t.Helper()
	start := time.Now()
	net := NewNetwork(t)
	c := &Cluster{Net: net, Coord: net.Node("coord-0"), Client: net.Node("client")}
	c.Coord.StartReady(t, Coordinator(c.Coord.Host, testCoordinator), 30*time.Second)
	for i := range n {
		nd := net.Node(fmt.Sprintf("store-%d", i))
		c.Stores = append(c.Stores, nd)
		c.StoreProcs = append(c.StoreProcs, nd.Start(t, Store(nd.Host, c.Coord.IP, "1GiB")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range c.StoreProcs {
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitStatus(t, 30*time.Second, fmt.Sprintf("a leader and %d stores alive", n), func(s ClusterStatus) bool {
		return s.Summary.Leader != "" && s.Summary.StoresAlive == n
	})
	var wg sync.WaitGroup
	errs := make([]error, len(fixtures))
	for i, fx := range fixtures {
		wg.Go(func() { _, errs[i] = c.Client.Run(ctx, Import(c.Coord.IP, fixtureDir(fx), fx)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("e2e: cluster of %d stores up, %v imported, in %v", n, fixtures, time.Since(start).Round(time.Millisecond))
	return c
}

// Status runs `pregate status` on the client host.
func (c *Cluster) Status(ctx context.Context) (ClusterStatus, error) {
	var s ClusterStatus
	out, err := c.Client.Run(ctx, Status(c.Coord.IP))
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 2) { // 2: something unavailable
		return s, err
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return s, fmt.Errorf("pregate status: %v: %s", err, out)
	}
	return s, nil
}

// WaitStatus polls Status until ok holds, and fails the test after timeout.
func (c *Cluster) WaitStatus(t testing.TB, timeout time.Duration, what string, ok func(ClusterStatus) bool) ClusterStatus {
	t.Helper()
	s, err := c.PollStatus(timeout, ok)
	if err != nil {
		t.Fatalf("e2e: waiting for %s: %v", what, err)
	}
	return s
}

// PollStatus polls Status every 500 ms until ok holds or timeout passes (then an error with the
// last status seen).
func (c *Cluster) PollStatus(timeout time.Duration, ok func(ClusterStatus) bool) (ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		s   ClusterStatus
		err error
	)
	for {
		s, err = c.Status(ctx)
		if err == nil && ok(s) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			b, _ := json.Marshal(s)
			return s, fmt.Errorf("not within %v (last error %v; last status %s)", timeout, err, b)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// StartWorker starts a worker on nd and waits until it is ready (its model loaded).
func (c *Cluster) StartWorker(t testing.TB, nd *Node, o WorkerOptions) *Proc {
	t.Helper()
	return nd.StartReady(t, Worker(nd.Host, c.Coord.IP, o), 60*time.Second)
}

func fixtureDir(name string) string { return filepath.Join(repoRoot, "testdata", name) }

// goldenPrompts are a fixture's prompts and HF's greedy ids for them.
func goldenPrompts(t testing.TB, fixture string) (prompts, want [][]int) {
	t.Helper()
	prompts, want, err := golden.Prompts(fixtureDir(fixture))
	if err != nil {
		t.Fatal(err)
	}
	return prompts, want
}

// distinctPrompts are n prompts made from a fixture's golden prompts, each made distinct by two
// ids of its own (so that a batch of them routes to many experts).
func distinctPrompts(t testing.TB, fixture string, n int) [][]int {
	g, _ := goldenPrompts(t, fixture)
	out := make([][]int, n)
	for i := range out {
		out[i] = append(slices.Clone(g[i%len(g)]), 7+i, 100+3*i)
	}
	return out
}
