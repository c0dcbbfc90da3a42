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
// Completions go on without a failure, and no store reserves a byte for them.
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
	var addrs []string
	for _, nd := range c.Stores {
		g, _ := StoreAddrs(nd.IP)
		addrs = append(addrs, g)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rogue := c.Net.Node("rogue")
	flood := rogue.StartExec(t, self, Daemon{Role: "put-flood", Args: []string{"-test.run=^$"},
		Env: []string{helperEnv + "=put-flood", helperStoreGRPC + "=" + strings.Join(addrs, ",")}})
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
