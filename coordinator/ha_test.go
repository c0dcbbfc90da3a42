package coordinator_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
)

// TestStoreRestartMovesNothing stops a store gracefully (SIGTERM's path) and starts it again on its
// data dir: while it is away it is "stopped", its replicas stay placed (even with no dead grace at
// all), and when it is back nothing has been copied.
func TestStoreRestartMovesNothing(t *testing.T) {
	lc := startClusterWith(t, cluster.Config{Stores: 3, Replicas: 2, StoreCapacity: 256 << 20, Persist: true,
		Coordinator: func(c *coordinator.Config) { c.RestartGrace = time.Minute }})
	importModel(t, lc, "../testdata/mixtral-tiny", "m")
	waitConverged(t, lc, 3)
	ctx := ctxFor(t, 30*time.Second)
	before, _, _, err := lc.Placement().Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	co := lc.Coordinator()
	copied := co.BytesCopied()
	if err := lc.StopStore("store-1"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, lc, 10*time.Second, "store-1 stopped", func(st *coordinator.Status) bool {
		return st.Summary.StoresStopped == 1
	})
	for start := co.Passes(); co.Passes() < start+5; time.Sleep(20 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatal("no passes while store-1 was stopped")
		}
	}
	if _, err := lc.StartStore("store-1"); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 3)
	after, _, _, err := lc.Placement().Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	for k, p := range before {
		if !slices.Equal(p.Ready(), after[k].Ready()) {
			t.Errorf("expert %v moved across a restart: %v → %v", k, p.Ready(), after[k].Ready())
		}
	}
	if n := co.BytesCopied() - copied; n != 0 {
		t.Errorf("%d bytes copied across a restart, want 0", n)
	}
}

// haCoordinators starts three coordinators, each with its own member of one embedded etcd cluster
// (as three `pregate coordinator --etcd-initial-cluster …` do), and joins them in gossip.
func haCoordinators(t *testing.T) []*coordinator.Coordinator {
	t.Helper()
	return haCoordinatorsWith(t, nil)
}

// haPKI is a CA and a gossip key for haCoordinatorsWith.
type haPKI struct {
	a         *tlsutil.Authority
	gossipKey []byte
}

func newHAPKI(t *testing.T) *haPKI {
	t.Helper()
	a, err := tlsutil.NewAuthority(t.TempDir(), "ha", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &haPKI{a: a, gossipKey: bytes.Repeat([]byte{5}, 32)}
}

func (p *haPKI) node(t *testing.T, role, name string) *tlsutil.Reloader {
	t.Helper()
	r, err := p.a.Node(tlsutil.Identity{Role: role, Name: name}, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// haCoordinatorsWith is haCoordinators, over mutual TLS (etcd's client and peer traffic, an
// encrypted gossip) when pki is set.
func haCoordinatorsWith(t *testing.T, pki *haPKI) []*coordinator.Coordinator {
	t.Helper()
	// The etcd ports are picked free and then bound by etcd: another test process may take one
	// in between (EADDRINUSE). Such a start is retried with new ports; any other failure fails.
	for attempt := 1; ; attempt++ {
		cos, err := startHACoordinators(t, pki)
		if err == nil {
			return cos
		}
		if !errors.Is(err, syscall.EADDRINUSE) && !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; again with other ports", attempt, err)
	}
}

// startHACoordinators starts three coordinators that bootstrap one etcd cluster, or stops those
// that started and returns the first failure.
func startHACoordinators(t *testing.T, pki *haPKI) ([]*coordinator.Coordinator, error) {
	t.Helper()
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, p, _ := net.SplitHostPort(l.Addr().String())
		return p
	}
	dir := t.TempDir()
	cfgs := make([]coordinator.Config, 3)
	var initial []string
	for i := range cfgs {
		c := coordinator.DefaultConfig()
		c.Name = fmt.Sprintf("coord-%d", i)
		c.DataDir = filepath.Join(dir, c.Name)
		c.EtcdClientURL, c.EtcdPeerURL = "http://127.0.0.1:"+port(), "http://127.0.0.1:"+port()
		c.HTTPAddr = "127.0.0.1:0"
		c.Interval, c.SessionTTL, c.DeadGrace, c.AntiEntropyInterval = 100*time.Millisecond, 2, 0, 300*time.Millisecond
		g := membership.DefaultConfig()
		g.BindAddr, g.BindPort = "127.0.0.1", 0
		g.FastTimers()
		c.Gossip = &g
		if pki != nil {
			c.TLS = pki.node(t, tlsutil.RoleCoordinator, c.Name)
			g.SecretKey = pki.gossipKey
		}
		cfgs[i] = c
		initial = append(initial, c.Name+"="+c.EtcdPeerURL)
	}
	cos := make([]*coordinator.Coordinator, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].EtcdInitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() { // the members bootstrap together
			defer wg.Done()
			cos[i], errs[i] = coordinator.New(cfgs[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, c := range cos {
				if c != nil {
					c.Close()
				}
			}
			return nil, fmt.Errorf("coordinator %d: %w", i, err)
		}
	}
	for _, c := range cos {
		t.Cleanup(func() { c.Close() })
	}
	return cos, nil
}

// waitLeader waits up to within for a leader among cos, other than those in skip.
func waitLeader(t *testing.T, cos []*coordinator.Coordinator, within time.Duration, skip ...*coordinator.Coordinator) *coordinator.Coordinator {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if l := leaderOf(cos, skip...); l != nil {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader within %v", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leaderOf(cos []*coordinator.Coordinator, skip ...*coordinator.Coordinator) *coordinator.Coordinator {
	for _, c := range cos {
		if c.IsLeader() && !slices.Contains(skip, c) {
			return c
		}
	}
	return nil
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, b.String()
}

// TestThreeCoordinatorsSurviveOne runs the control plane with no external service: three
// coordinators on their own etcd cluster elect one leader and tell clients every member; when the
// leader stops another takes over within the lease TTL; with two of three gone, /ready says the
// quorum is lost.
func TestThreeCoordinatorsSurviveOne(t *testing.T) {
	cos := haCoordinators(t)
	first := waitLeader(t, cos, 15*time.Second)
	for _, c := range cos {
		if c != first && c.IsLeader() {
			t.Fatalf("two leaders: %s and another", first.HTTPAddr())
		}
		if eps := c.EtcdMembers(context.Background()); len(eps) != 3 {
			t.Errorf("%s: etcd members %v, want 3", c.HTTPAddr(), eps)
		}
		if code, body := httpGet(t, "http://"+c.HTTPAddr()+"/ready"); code != http.StatusOK {
			t.Errorf("%s /ready: %d %s", c.HTTPAddr(), code, body)
		}
	}

	// The leading coordinator hands etcd's raft leadership to another member, so that losing the
	// leader's process never costs etcd an election too.
	cli := mustDial(t, first.EtcdMembers(context.Background()))
	deadline := time.Now().Add(15 * time.Second)
	for {
		raftLeader := raftLeaderOf(cli)
		if raftLeader != "" && raftLeader != first.Name() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd's raft leader is still %q, the leading coordinator's own member", raftLeader)
		}
		time.Sleep(200 * time.Millisecond)
	}

	stopped := time.Now()
	first.Close()
	var next *coordinator.Coordinator
	for next = leaderOf(cos, first); next == nil; next = leaderOf(cos, first) {
		if time.Since(stopped) > 10*time.Second {
			t.Fatal("no new leader 10 s after the leader stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Close resigns: the next leader does not wait for the lease (2 s) to expire.
	t.Logf("new leader %s after %v", next.HTTPAddr(), time.Since(stopped))
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("a resigned leader was replaced after %v, want < the 2 s lease", took)
	}
	// Placement writes work: the new leader's passes run against the two members left.
	ctx := ctxFor(t, 10*time.Second)
	for start := next.Passes(); next.Passes() < start+3; time.Sleep(20 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatal("the new leader runs no passes")
		}
	}
	if err := next.Ready(ctx); err != nil {
		t.Errorf("two of three members: %v", err)
	}
	ps := placement.New(mustDial(t, next.EtcdMembers(ctx)), "")
	if err := ps.SetDrain(ctx, true, "no-such-store"); err != nil {
		t.Errorf("a placement write with two of three members: %v", err)
	}

	var other *coordinator.Coordinator
	for _, c := range cos {
		if c != first && c != next {
			other = c
		}
	}
	other.Close()
	code, body := httpGet(t, "http://"+next.HTTPAddr()+"/ready")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "quorum") {
		t.Errorf("one of three members: /ready %d %q, want 503 naming the quorum", code, body)
	}
	if code, _ := httpGet(t, "http://"+next.HTTPAddr()+"/health"); code != http.StatusOK {
		t.Errorf("/health %d: the process itself still works", code)
	}
	// Status says why rather than timing out, and a write that requires a leader fails fast.
	cli = mustDial(t, []string{"http://" + strings.TrimPrefix(next.EtcdEndpoints()[0], "http://")})
	began := time.Now()
	st, err := coordinator.ReadStatus(context.Background(), cli, placement.New(cli, ""), 2)
	if err != nil || st.Summary.State != coordinator.StateUnavailable || !strings.Contains(st.Summary.Reason, "no quorum") {
		t.Errorf("status without a quorum: %+v, %v", st, err)
	}
	wctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 10*time.Second)
	defer cancel()
	deadline = time.Now().Add(5 * time.Second)
	for {
		err = placement.New(cli, "").SetDrain(wctx, true, "no-such-store")
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the member has not noticed it lost the quorum yet
	}
	if err == nil || !strings.Contains(err.Error(), "no leader") {
		t.Errorf("a write without a quorum: %v, want etcd's no leader", err)
	}
	t.Logf("status and a write without a quorum answered in %v", time.Since(began))
}

// raftLeaderOf is the name of the etcd member that leads raft, "" when none answers as leader.
func raftLeaderOf(cli *clientv3.Client) string {
	ml, err := cli.MemberList(context.Background())
	if err != nil {
		return ""
	}
	for _, m := range ml.Members {
		if st, err := cli.Status(context.Background(), m.ClientURLs[0]); err == nil && st.Leader == m.ID {
			return m.Name
		}
	}
	return ""
}

func mustDial(t *testing.T, eps []string) *clientv3.Client {
	t.Helper()
	cli, err := placement.Dial(eps, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestRestartedCoordinatorFindsGossip restarts the coordinator with no --join: it finds the
// stores' gossip through their records in etcd, so it sees them alive (not merely answering
// probes: suspect), and status reports no false outage.
func TestRestartedCoordinatorFindsGossip(t *testing.T) {
	lc := startCluster(t, 3, 2, 256<<20)
	recs, err := lc.Placement().Stores(ctxFor(t, 5*time.Second))
	if err != nil || len(recs) != 3 {
		t.Fatalf("store records %+v, %v", recs, err)
	}
	for _, rec := range recs {
		if rec.GossipAddr == "" {
			t.Fatalf("store record %+v has no gossip address", rec)
		}
	}
	lc.StopCoordinator(lc.Coordinator())
	co, err := lc.StartCoordinatorWith(func(c *coordinator.Config) {
		g := *c.Gossip
		g.Join = nil // as `pregate coordinator` restarted without --join
		c.Gossip = &g
	})
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, lc, 15*time.Second, "stores alive through the new coordinator's gossip", func(st *coordinator.Status) bool {
		return st.Summary.Leader == "coord-1" && st.Summary.StoresAlive == 3 && st.Summary.StoresSuspect == 0
	})
	if n := co.GossipStores(); n != 3 {
		t.Errorf("the restarted coordinator's gossip sees %d stores, want 3", n)
	}
}

// TestScaleOutWaitsForTheNextStore adds two stores 400 ms apart, as a StatefulSet scaled from 3
// to 5 starts its pods one by one: with a join settle, nothing moves until the second has joined,
// and then blobs move once: exactly what the new stores end up holding.
func TestScaleOutWaitsForTheNextStore(t *testing.T) {
	lc := startClusterWith(t, cluster.Config{Stores: 3, Replicas: 2, StoreCapacity: 256 << 20,
		Coordinator: func(c *coordinator.Config) { c.JoinSettle = 1500 * time.Millisecond }})
	importModel(t, lc, synthModel(t), "moe")
	waitConverged(t, lc, 3)
	co := lc.Coordinator()
	before := co.BytesCopied()
	if _, err := lc.AddStore(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // passes run every 100 ms: without the settle, copies would have begun
	if n := co.BytesCopied() - before; n != 0 {
		t.Errorf("%d bytes copied while the first new store was settling", n)
	}
	if _, err := lc.AddStore(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 5)
	moved := co.BytesCopied() - before
	onNew := bytesOn(t, lc, "moe", "store-3") + bytesOn(t, lc, "moe", "store-4")
	t.Logf("moved %d bytes, the new stores hold %d", moved, onNew)
	if onNew == 0 || moved != onNew {
		t.Errorf("moved %d bytes for %d now on the new stores: want them equal (each blob moved once)", moved, onNew)
	}
}

// TestImpostorStoreGetsNothing is the attack that took the whole model: a node joins the gossip
// as a store with a huge capacity. With TLS, it holds a real certificate of the cluster — but a
// worker's, not a store's of its name — so it never answers a probe as that store, is never
// verified, and no blob is placed on it; the real stores keep every replica.
func TestImpostorStoreGetsNothing(t *testing.T) {
	lc := startClusterWith(t, cluster.Config{Stores: 3, Replicas: 2, StoreCapacity: 256 << 20, TLS: true})
	importer, err := lc.TLS(tlsutil.RoleImporter, "import")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := coordinator.Import(ctxFor(t, 60*time.Second), lc.Placement(), coordinator.ImportOptions{Dir: "../testdata/mixtral-tiny", Name: "m", TLS: importer}); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 3)
	stolen, err := lc.TLS(tlsutil.RoleWorker, "worker-7") // a certificate of the cluster, another role's
	if err != nil {
		t.Fatal(err)
	}
	cfg := expertstore.DefaultConfig()
	cfg.NodeName, cfg.ListenAddr, cfg.MemoryLimit, cfg.MaxBlobBytes = "store-rogue", "127.0.0.1:0", 1<<40, 1<<30
	cfg.TLS = stolen
	// Without the cluster's gossip key it cannot even join.
	g := membership.DefaultConfig()
	g.BindAddr, g.BindPort, g.Join = "127.0.0.1", 0, []string{lc.Coordinator().GossipAddr()}
	g.FastTimers()
	cfg.Gossip = &g
	if rogue, err := expertstore.New(cfg); err == nil {
		rogue.Close()
		t.Fatal("a node without the gossip key joined")
	}
	// With the key (an insider), it is in the gossip, but its certificate is a worker's.
	cfg.Gossip = lc.GossipConfig()
	cfg.Gossip.FastTimers()
	rogue, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	co := lc.Coordinator()
	for start := co.Passes(); co.Passes() < start+10; time.Sleep(20 * time.Millisecond) {
	}
	st := readStatus(t, lc)
	for _, s := range st.Stores {
		if s.Name == "store-rogue" && (s.State == "alive" || s.Blobs > 0) {
			t.Errorf("the impostor: %+v", s)
		}
	}
	if n := rogue.Stats().Blobs; n != 0 {
		t.Errorf("the impostor holds %d blobs", n)
	}
	if st.Summary.ExpertsUnderReplicated != 0 || st.Summary.ExpertsUnavailable != 0 || st.Summary.StoresAlive != 3 {
		t.Errorf("status with the impostor: %+v", st.Summary)
	}
	if n := co.BytesCopied(); n != 0 {
		t.Errorf("%d bytes copied: placement moved with the impostor in the gossip", n)
	}
}

// TestStoreCapacityCapped: a store with a genuine store certificate (stolen, or a store gone bad)
// that reports a terabyte is taken to have at most the coordinator's --max-store-capacity, so it
// draws no more blobs than an honest store would.
func TestStoreCapacityCapped(t *testing.T) {
	const capped = 256 << 20
	lc := startClusterWith(t, cluster.Config{Stores: 2, Replicas: 2, StoreCapacity: capped, TLS: true,
		Coordinator: func(c *coordinator.Config) { c.MaxStoreCapacity = capped }})
	big, err := lc.TLS(tlsutil.RoleStore, "store-big")
	if err != nil {
		t.Fatal(err)
	}
	cfg := expertstore.DefaultConfig()
	cfg.NodeName, cfg.ListenAddr, cfg.MemoryLimit, cfg.MaxBlobBytes = "store-big", "127.0.0.1:0", 1<<40, 1<<30
	cfg.TLS, cfg.Gossip = big, lc.GossipConfig()
	cfg.Gossip.FastTimers()
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var rec placement.StoreRecord
		recs, err := lc.Placement().Stores(ctxFor(t, 5*time.Second))
		for _, r := range recs {
			if r.Name == "store-big" {
				rec = r
			}
		}
		if err == nil && rec.Verified {
			if rec.Capacity != capped {
				t.Fatalf("store-big is taken to hold %d bytes, want the cap %d", rec.Capacity, capped)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store-big never verified: %+v, %v", rec, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestThreeCoordinatorsOverTLS: three coordinators whose etcd members talk mutual TLS to each
// other and to their clients elect a leader, turn etcd's authentication on, hand etcd's raft
// leadership away (a root operation: the coordinator's user is root), and survive their leader.
// A worker's certificate then reads placement but cannot write a drain mark.
func TestThreeCoordinatorsOverTLS(t *testing.T) {
	// Last, after the coordinators have closed: etcd's peer connections over TLS end only when
	// its peer read timeout (5 s) passes, since its timeoutConn renews the deadline that aborts a
	// pending read; wait for them rather than report them as leaks.
	t.Cleanup(func() {
		for deadline := time.Now().Add(10 * time.Second); goleak.Find(leakOptions...) != nil && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
	})
	pki := newHAPKI(t)
	cos := haCoordinatorsWith(t, pki)
	first := waitLeader(t, cos, 20*time.Second)
	eps := first.EtcdMembers(context.Background())
	if len(eps) != 3 || !strings.HasPrefix(eps[0], "https://") {
		t.Fatalf("etcd members %v, want 3 https URLs", eps)
	}
	root, err := placement.Dial(eps, pki.node(t, tlsutil.RoleCoordinator, "ops"))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	worker, err := placement.Dial(eps, pki.node(t, tlsutil.RoleWorker, "worker-0"))
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		raftLeader := raftLeaderOf(root)
		err := placement.New(worker, "").SetDrain(ctxFor(t, 5*time.Second), true, "store-0")
		authOn := errors.Is(err, rpctypes.ErrPermissionDenied)
		if raftLeader != "" && raftLeader != first.Name() && authOn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raft leader %q (the leading coordinator is %s), a worker's drain write: %v", raftLeader, first.Name(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := placement.New(worker, "").Drains(ctxFor(t, 5*time.Second)); err != nil {
		t.Errorf("a worker cannot read placement: %v", err)
	}
	first.Close()
	next := waitLeader(t, cos, 10*time.Second, first)
	admin, err := placement.Dial(next.EtcdMembers(ctxFor(t, 5*time.Second)), pki.node(t, tlsutil.RoleAdmin, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// A write right after a member left may be dropped by raft once; etcd's clients retry it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err := placement.New(admin, "").SetDrain(ctxFor(t, 5*time.Second), true, "no-such-store")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an admin's drain with two of three members: %v", err)
		}
	}

	// The coordinator's HTTP is HTTPS: probes need no certificate, /v1/* one of the cluster.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer anon.CloseIdleConnections()
	base := "https://" + next.HTTPAddr()
	for path, want := range map[string]int{"/health": http.StatusOK, "/ready": http.StatusOK, "/v1/cluster": http.StatusForbidden, "/v1/status": http.StatusForbidden} {
		resp, err := anon.Get(base + path)
		if err != nil {
			t.Errorf("GET %s without a certificate: %v", path, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without a certificate: %d, want %d", path, resp.StatusCode, want)
		}
	}
	withCert := pki.node(t, tlsutil.RoleWorker, "worker-1").HTTPClient(tlsutil.RoleCoordinator)
	defer withCert.CloseIdleConnections()
	resp, err := withCert.Get(base + "/v1/cluster")
	if err != nil {
		t.Fatalf("GET /v1/cluster with a worker's certificate: %v", err)
	}
	var info coordinator.ClusterInfo
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || len(info.EtcdEndpoints) != 3 {
		t.Errorf("GET /v1/cluster with a worker's certificate: %d %+v %v", resp.StatusCode, info, err)
	}
	if resp, err := http.Get("http://" + next.HTTPAddr() + "/v1/cluster"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered /v1/cluster")
		}
	}
	http.DefaultClient.CloseIdleConnections()
}
