package expertstore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/routing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHealthReadyMetrics checks the store's HTTP endpoint: /health and /ready answer 200 once it
// serves, and /metrics counts what a Put and two fetches (data plane and gRPC) did; a graceful
// stop turns /ready off before the listener goes.
func TestHealthReadyMetrics(t *testing.T) {
	cfg := storeConfig("store-h", t.TempDir(), nil)
	cfg.HTTPAddr = "127.0.0.1:0"
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := "http://" + s.HTTPAddr()
	for _, p := range []string{"/health", "/ready"} {
		if code, body := get(t, base+p); code != http.StatusOK {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 64, 64, 1)
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	cl := newClient(t, client.DefaultConfig())
	grpcCl := newClient(t, client.Config{Transport: client.NewGRPCTransport(client.NewConns(), 64<<10)})
	if _, _, err := cl.Put(ctx, replicaOf(s), data); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{cl, grpcCl} {
		if err := c.Fetch(ctx, ref, []routing.Replica{replicaOf(s)}, make([]byte, len(data))); err != nil {
			t.Fatal(err)
		}
	}
	// The store counts a data-plane request after its last byte is written: the client may have
	// it before the counters move, so read /metrics until they have (or report what they say).
	var problems []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		problems = metricsProblems(t, base, len(data))
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
	if netaddr.IsWildcard(s.Addr()) || netaddr.IsWildcard(s.DataAddr()) || netaddr.IsWildcard(s.HTTPAddr()) {
		t.Errorf("published a wildcard: %s %s %s", s.Addr(), s.DataAddr(), s.HTTPAddr())
	}
}

// metricsProblems lists what the store's /metrics says otherwise than after one Put and two
// fetches (data plane and gRPC) of a blob of n bytes.
func metricsProblems(t *testing.T, base string, n int) []string {
	t.Helper()
	code, m := get(t, base+"/metrics")
	if code != http.StatusOK {
		return []string{fmt.Sprintf("/metrics: %d", code)}
	}
	var problems []string
	for _, want := range []string{
		"pregate_store_blobs 1",
		"pregate_store_fetches_total 2",
		"pregate_store_quarantined_blobs 0",
		"pregate_store_ready 1",
		"pregate_store_inflight_requests 0",
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="pregate.store.v1.ExpertStore",grpc_type="client_stream"} 1`,
		`grpc_server_handling_seconds_count{grpc_method="Fetch",grpc_service="pregate.store.v1.ExpertStore",grpc_type="server_stream"} 1`,
		`pregate_store_dataplane_request_seconds_count{op="fetch",outcome="ok"} 1`,
	} {
		if !strings.Contains(m, want) {
			problems = append(problems, fmt.Sprintf("/metrics lacks %q", want))
		}
	}
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, "pregate_store_served_bytes_total ") && line != "pregate_store_served_bytes_total "+itoa(2*n) {
			problems = append(problems, fmt.Sprintf("%s, want %d", line, 2*n))
		}
		if strings.HasPrefix(line, "pregate_store_received_bytes_total ") && line != "pregate_store_received_bytes_total "+itoa(n) {
			problems = append(problems, fmt.Sprintf("%s, want %d", line, n))
		}
	}
	return problems
}

// TestWildcardBindPublishesAHost binds every interface, as `pregate store` does by default: what
// the store publishes (gossip meta, Stats) names a host others can dial, never 0.0.0.0 or [::].
func TestWildcardBindPublishesAHost(t *testing.T) {
	cfg := storeConfig("store-w", "", nil)
	cfg.ListenAddr, cfg.DataListenAddr, cfg.HTTPAddr = "0.0.0.0:0", "", "0.0.0.0:0"
	cfg.Gossip.BindAddr = "0.0.0.0"
	cfg.AdvertiseHost = "127.0.0.1" // the address the test can dial; the rule without it is netaddr's, tested there
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	meta := s.Member().LocalNode().Meta
	for what, addr := range map[string]string{"grpc": s.Addr(), "data": s.DataAddr(), "http": s.HTTPAddr(),
		"meta grpc": meta.GRPCAddr, "meta data": meta.DataAddr, "gossip": s.Member().Addr(), "stats data": s.Stats().DataAddr} {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("%s address %q, want the advertised host", what, addr)
		}
	}
	// And it is reachable there.
	if code, _ := get(t, "http://"+s.HTTPAddr()+"/ready"); code != http.StatusOK {
		t.Errorf("/ready at the published address: %d", code)
	}
	if _, err := newClient(t, client.DefaultConfig()).Stats(context.Background(), replicaOf(s)); err != nil {
		t.Errorf("Stats at the published address: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
