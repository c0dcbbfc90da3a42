//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// putFloodStreams is how many header-only Puts the rogue keeps open on each store.
const putFloodStreams = 8

// heldStreams keeps the rogue's streams referenced while it waits to be killed.
var heldStreams []storepb.ExpertStore_PutClient

// putFlood is the rogue host's helper: on every store at addrs it opens putFloodStreams Puts that
// each declare a 900 MiB blob and then send nothing, and holds them until killed. It prints
// "open" once every stream's header is sent.
func putFlood(addrs []string) int {
	conns := client.NewConns()
	if ca := os.Getenv("PREGATE_TLS_CA"); ca != "" { // a stolen certificate (an importer's)
		r, err := tlsutil.Load(tlsutil.Files{CA: ca, Cert: os.Getenv("PREGATE_TLS_CERT"), Key: os.Getenv("PREGATE_TLS_KEY")})
		if err != nil {
			fmt.Fprintln(os.Stderr, "put-flood:", err)
			return 1
		}
		conns = client.NewTLSConns(r)
	}
	ctx := context.Background()
	for i, addr := range addrs {
		raw, err := conns.Store(routing.Replica{Store: fmt.Sprint("store-", i), GRPCAddr: addr})
		if err != nil {
			fmt.Fprintln(os.Stderr, "put-flood:", err)
			return 1
		}
		for j := range putFloodStreams {
			st, err := raw.Put(ctx)
			if err == nil {
				fake := blob.Sum([]byte(fmt.Sprint(i, j)))
				err = st.Send(&storepb.PutRequest{Msg: &storepb.PutRequest_Header{Header: &storepb.PutHeader{Digest: fake.String(), Size: 900 << 20}}})
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "put-flood:", err)
				return 1
			}
			heldStreams = append(heldStreams, st)
		}
	}
	fmt.Println("open")
	select {} // held until the test kills this process
}

// TestHeaderOnlyPutFlood is the attack that used to take the cluster down: a rogue host opens
// header-only Puts declaring nearly each store's whole memory on every store, and holds them.
// Completions go on without a failure, and no store reserves a byte for them. With TLS the rogue
// holds a stolen importer certificate (without one it gets no stream at all: TestRogueHost).
func TestHeaderOnlyPutFlood(t *testing.T) {
	row := Record(t, "attack: header-only Puts of 900 MiB on every store, under load")
	c, w := faultCluster(t)
	c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	used := map[string]float64{}
	for _, nd := range c.Stores {
		m, err := Scrape(context.Background(), StoreURL(nd.IP)+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		used[nd.Name] = m.Sum("pregate_store_used_bytes")
	}
	rogue := c.Net.Node("rogue")
	flood := rogue.StartExec(t, testBinary(t), c.secure(t, putFloodDaemon(c), "importer", "stolen", rogue.IP))
	rs := loadPhase(t, WorkerURL(w.IP), func() {
		time.Sleep(8 * time.Second) // serve under the attack
		for _, nd := range c.Stores {
			m, err := Scrape(context.Background(), StoreURL(nd.IP)+"/metrics")
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Sum("pregate_store_used_bytes"); got != used[nd.Name] {
				t.Errorf("%s: %.0f bytes used under the attack, %.0f before: the header-only Puts reserved bytes", nd.Name, got, used[nd.Name])
			}
			if m.Sum("pregate_store_inflight_requests") < putFloodStreams {
				t.Errorf("%s: %.0f requests in flight: the flood is not open", nd.Name, m.Sum("pregate_store_inflight_requests"))
			}
		}
	})
	if flood.Exited() {
		t.Errorf("the flood helper exited early:\n%s", flood.Tail(10))
	}
	failed, p50, p99, _ := Summary(t, "under a Put flood", rs)
	row.Set("streams held", "%d per store", putFloodStreams)
	row.Set("requests/failed", "%d/%d", len(rs), failed)
	row.Set("latency p50/p99", "%s/%s", ms(p50), ms(p99))
	row.Set("bytes reserved by the flood", "0")
}

// TestRogueHost is a host on the cluster's network without a certificate or the gossip key, trying
// what once took the whole model: joining as a store with a terabyte, draining a store through
// etcd, asking a coordinator for etcd's endpoints, and Putting to every store. Everything is
// refused, and the cluster does not change.
func TestRogueHost(t *testing.T) {
	if !clusterTLS {
		t.Skip("e2e: PREGATE_E2E_TLS=0: a cluster without TLS trusts its network")
	}
	row := Record(t, "attack: a rogue host without a certificate or the gossip key")
	c := StartCluster(t, 3, "mixtral-tiny")
	before := c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	rogue := c.Net.Node("rogue")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	coord := c.Coords[0]
	attempts := map[string]Daemon{
		"join as a store (1 TiB)": {Role: "rogue-store", Args: []string{"store", "--join", joinList(c.CoordIPs()), "--join-retry", "3s",
			"--memory-limit", "1TiB"}, Env: nodeEnv(rogue.Host, "store")},
		"drain store-0 through etcd": {Role: "rogue-drain", Args: []string{"drain", "--etcd-endpoints",
			"https://" + hostPort(coord.IP, 2379), "store-0"}},
		"read etcd's endpoints from a coordinator": {Role: "rogue-status", Args: []string{"status", "--coordinator",
			hostPort(coord.IP, CoordinatorHTTPPort)}},
	}
	refused := 0
	for what, d := range attempts {
		out, err := rogue.Run(ctx, d)
		if err == nil {
			t.Errorf("%s: accepted:\n%s", what, out)
			continue
		}
		t.Logf("%s: refused: %v", what, err)
		refused++
	}
	if out, err := rogue.Exec(ctx, testBinary(t), putFloodDaemon(c)); err == nil {
		t.Errorf("Puts to every store without a certificate: accepted:\n%s", out)
	} else {
		t.Logf("Puts without a certificate: refused: %v", err)
		refused++
	}
	after := c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	if after.Summary.StoresAlive != before.Summary.StoresAlive || after.Summary.StoresDraining != 0 {
		t.Errorf("the cluster changed: %+v, before %+v", after.Summary, before.Summary)
	}
	for _, s := range after.Stores {
		if s.Name == "rogue" {
			t.Errorf("the rogue is a store: %+v", s)
		}
	}
	row.Set("attempts refused", "%d of %d", refused, len(attempts)+1)
	row.Set("stores alive before/after", "%d/%d", before.Summary.StoresAlive, after.Summary.StoresAlive)
	row.Set("draining after", "%d", after.Summary.StoresDraining)
}

// putFloodDaemon runs the put-flood helper (this test binary) against every store of c.
func putFloodDaemon(c *Cluster) Daemon {
	var addrs []string
	for _, nd := range c.Stores {
		g, _ := StoreAddrs(nd.IP)
		addrs = append(addrs, g)
	}
	return Daemon{Role: "put-flood", Args: []string{"-test.run=^$"},
		Env: []string{helperEnv + "=put-flood", helperStoreGRPC + "=" + strings.Join(addrs, ",")}}
}

// testBinary is this test binary's path (re-executed on a node as a helper).
func testBinary(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}
