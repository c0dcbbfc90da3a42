//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/bench"
	"github.com/pregate/pregate/routing"
)

// The test binary re-executes itself on a node as a helper when helperEnv names one.
const (
	helperEnv       = "PREGATE_E2E_HELPER"
	helperStoreGRPC = "PREGATE_E2E_STORE_GRPC"
	helperStoreData = "PREGATE_E2E_STORE_DATA"
)

// runHelper runs the helper name and returns the process's exit status.
func runHelper(name string) int {
	switch name {
	case "fetch":
		// `pregate bench fetch`'s measurement (bench.RunFetch: the fetch client's data plane, a raw
		// TCP copy of the same bytes, and gRPC) against a store on another host. The command itself
		// only spawns a store on loopback.
		r := routing.Replica{Store: "bench", GRPCAddr: os.Getenv(helperStoreGRPC), DataAddr: os.Getenv(helperStoreData)}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res, err := bench.RunFetch(ctx, r, bench.FetchOptions{Size: 4 << 20, Count: 8, Rounds: 2, MinBytes: 256 << 20})
		if err != nil {
			fmt.Fprintln(os.Stderr, "fetch helper:", err)
			return 1
		}
		if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
			return 1
		}
		return 0
	case "put-flood":
		return putFlood(strings.Split(os.Getenv(helperStoreGRPC), ","))
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: no such helper\n", helperEnv, name)
		return 2
	}
}

// TestDataPathAcrossBridge measures blob fetches (and the raw TCP copy and gRPC they are compared
// with) from a client host to a store host across the bridge, and, as the reference, from the
// store's own host (its own address, no veth). The test binary is the client, re-executed on the
// node (pregate bench fetch cannot target a remote store yet).
func TestDataPathAcrossBridge(t *testing.T) {
	row := Record(t, "i. data path across the bridge (bench.RunFetch, 4 MiB blobs)")
	net := NewNetwork(t)
	store, client := net.Node("store-0"), net.Node("client")
	store.StartReady(t, StandaloneStore(store.Host, "256MiB"), 30*time.Second)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	grpc, data := StoreAddrs(store.IP)
	helper := Daemon{Role: "fetch-helper", Args: []string{"-test.run=^$"},
		Env: []string{helperEnv + "=fetch", helperStoreGRPC + "=" + grpc, helperStoreData + "=" + data}}
	for _, tt := range []struct {
		name string
		from *Node
	}{
		{"bridge", client},
		{"local", store},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		out, err := tt.from.Exec(ctx, self, helper)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var res bench.FetchResult
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%s: %v: %s", tt.name, err, out)
		}
		if res.FetchBytesPerSecond <= 0 || res.TCPBytesPerSecond <= 0 {
			t.Fatalf("%s: %+v", tt.name, res)
		}
		rates := fmt.Sprintf("%.2f/%.2f/%.2f", res.FetchBytesPerSecond/1e9, res.TCPBytesPerSecond/1e9, res.GRPCBytesPerSecond/1e9)
		t.Logf("%s: fetch/tcp/grpc %s GB/s, fetch÷tcp %.2f", tt.name, rates, res.Ratio)
		row.Set(tt.name+" fetch/tcp/grpc GB/s", "%s", rates)
		row.Set(tt.name+" fetch÷tcp", "%.2f", res.Ratio)
	}
}
