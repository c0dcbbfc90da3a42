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

// Cluster is coordinators (each with its etcd member), stores and a client host for the CLI, each a
// node of one network. Workers are added by the scenarios (StartWorker).
type Cluster struct {
	Net    *Network
	Coords []*Node
	// CoordProcs are the coordinators' processes, by index of Coords (the latest started).
	CoordProcs []*Proc
	Client     *Node // runs pregate import and pregate status, as a Job would
	Stores     []*Node
	// StoreProcs are the stores' processes, by index of Stores (the latest started).
	StoreProcs []*Proc
	coordOpts  CoordinatorOptions
	// storeDaemon is what a store node runs (nil: roles.go's Store); the chart mode sets the
	// rendered StatefulSet's pod instead.
	storeDaemon func(nd *Node) Daemon
	// pki, when set, is the cluster's mutual TLS and gossip key (tls_test.go).
	pki *clusterPKI
	t   testing.TB
}

// storeFor is what the store on nd runs.
func (c *Cluster) storeFor(nd *Node) Daemon {
	if c.storeDaemon != nil {
		return c.storeDaemon(nd)
	}
	return c.secure(c.t, Store(nd.Host, c.CoordIPs(), "1GiB"), "store", nd.Name, nd.IP)
}

// ClusterOptions shape a cluster: its stores and coordinators (1, or 3 on one etcd cluster).
type ClusterOptions struct {
	Stores, Coordinators int
	Coordinator          CoordinatorOptions // testCoordinator when zero
	// Plaintext runs it without TLS even when clusterTLS is on.
	Plaintext bool
}

// StartCluster starts a coordinator and n stores (1 GiB each), waits until the leader sees every
// store alive, and imports the fixtures (testdata/<name>, imported under that name).
func StartCluster(t testing.TB, n int, fixtures ...string) *Cluster {
	t.Helper()
	return StartClusterWith(t, ClusterOptions{Stores: n, Coordinators: 1}, fixtures...)
}

// StartClusterWith is StartCluster with o's coordinators.
func StartClusterWith(t testing.TB, o ClusterOptions, fixtures ...string) *Cluster {
	t.Helper()
	start := time.Now()
	net := NewNetwork(t)
	c := &Cluster{Net: net, Client: net.Node("client"), coordOpts: o.Coordinator, t: t}
	if c.coordOpts.Replicas == 0 {
		c.coordOpts = testCoordinator
	}
	if clusterTLS && !o.Plaintext {
		c.pki = newClusterPKI(t, c.Client.Dir)
	}
	var peers []Host
	for i := range max(o.Coordinators, 1) {
		nd := net.Node(fmt.Sprintf("coord-%d", i))
		c.Coords = append(c.Coords, nd)
		peers = append(peers, nd.Host)
	}
	if len(peers) > 1 {
		c.coordOpts.Peers = peers
	}
	for _, nd := range c.Coords { // several members bootstrap together: start them all, then wait
		c.CoordProcs = append(c.CoordProcs, nd.Start(t, c.coordinator(nd)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range c.CoordProcs {
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range o.Stores {
		c.AddStore(t, fmt.Sprintf("store-%d", i))
	}
	for _, p := range c.StoreProcs {
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	n := o.Stores
	c.WaitStatus(t, 30*time.Second, fmt.Sprintf("a leader and %d stores alive", n), func(s ClusterStatus) bool {
		return s.Summary.Leader != "" && s.Summary.StoresAlive == n
	})
	var wg sync.WaitGroup
	errs := make([]error, len(fixtures))
	for i, fx := range fixtures {
		d := c.tool(Import(c.CoordIPs(), fixtureDir(fx), fx), "importer") // here: it may t.Fatal
		wg.Go(func() { _, errs[i] = c.Client.Run(ctx, d) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("e2e: cluster of %d stores up (TLS %v), %v imported, in %v", n, c.pki != nil, fixtures, time.Since(start).Round(time.Millisecond))
	return c
}

// CoordIPs are the coordinators' addresses.
func (c *Cluster) CoordIPs() []string {
	var ips []string
	for _, nd := range c.Coords {
		ips = append(ips, nd.IP)
	}
	return ips
}

// AddStore starts a store on a new node named name (1 GiB), without waiting for it.
func (c *Cluster) AddStore(t testing.TB, name string) *Proc {
	t.Helper()
	nd := c.Net.Node(name)
	p := nd.Start(t, c.storeFor(nd))
	c.Stores = append(c.Stores, nd)
	c.StoreProcs = append(c.StoreProcs, p)
	return p
}

// RestartStore starts store i's daemon again on its node (same name and data dir) and waits until
// it is ready.
func (c *Cluster) RestartStore(t testing.TB, i int) *Proc {
	t.Helper()
	nd := c.Stores[i]
	c.StoreProcs[i] = nd.StartReady(t, c.storeFor(nd), 60*time.Second)
	return c.StoreProcs[i]
}

// Status runs `pregate status` on the client host.
func (c *Cluster) Status(ctx context.Context) (ClusterStatus, error) {
	var s ClusterStatus
	out, err := c.Client.Run(ctx, c.tool(Status(c.CoordIPs()), "admin"))
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
	return nd.StartReady(t, c.secure(t, Worker(nd.Host, c.CoordIPs(), o), "worker", nd.Name, nd.IP), 60*time.Second)
}

// coordinator is what the coordinator on nd runs.
func (c *Cluster) coordinator(nd *Node) Daemon {
	return c.secure(c.t, Coordinator(nd.Host, c.coordOpts), "coordinator", nd.Name, nd.IP)
}

// tool is d (a CLI command run on the client host) with the certificate of role.
func (c *Cluster) tool(d Daemon, role string) Daemon {
	return c.secure(c.t, d, role, role, c.Client.IP)
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
