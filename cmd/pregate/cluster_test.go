package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pregate/pregate/cluster"
)

// statusJSON runs `pregate status -o json` and decodes it generically, as a script would.
func statusJSON(t *testing.T, endpoints string) (map[string]any, error) {
	t.Helper()
	out, _, err := runCmd(t, "status", "--etcd-endpoints", endpoints, "-o", "json")
	var v map[string]any
	if jerr := json.Unmarshal([]byte(out), &v); jerr != nil {
		t.Fatalf("status -o json printed %q: %v (command error %v)", out, jerr, err)
	}
	return v, err
}

func summaryInt(t *testing.T, st map[string]any, key string) int {
	t.Helper()
	v, ok := st["summary"].(map[string]any)[key].(float64)
	if !ok {
		t.Fatalf("summary has no number %q: %v", key, st["summary"])
	}
	return int(v)
}

func TestImportStatusDrainCommands(t *testing.T) {
	lc, err := cluster.Start(cluster.Config{Dir: t.TempDir(), Stores: 2, Replicas: 1, StoreCapacity: 64 << 20, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	eps := strings.Join(lc.EtcdEndpoints(), ",")
	t.Setenv("PREGATE_ETCD_ENDPOINTS", eps)

	// Wait for both stores' records, then import through the coordinator's HTTP address.
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, _ := statusJSON(t, eps)
		if summaryInt(t, st, "stores_alive") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stores never alive: %v", st["summary"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, stderr, err := runCmd(t, "import", "--coordinator", lc.Coordinator().HTTPAddr(), "--model", "../../testdata/mixtral-tiny", "--name", "mx", "-o", "json")
	if err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep["published"] != true {
		t.Fatalf("import printed %q (%v)", out, err)
	}
	if !strings.Contains(stderr, "100%") {
		t.Errorf("no progress lines on a non-terminal: %q", stderr)
	}

	st, err := statusJSON(t, eps)
	if err != nil {
		t.Fatalf("healthy cluster: status exited with %v", err)
	}
	for _, k := range []string{"stores", "models", "workers"} {
		if _, ok := st[k].([]any); !ok {
			t.Errorf("status JSON %q is not a list: %T", k, st[k])
		}
	}
	models := st["models"].([]any)
	if len(models) != 1 || models[0].(map[string]any)["name"] != "mx" || models[0].(map[string]any)["experts"].(float64) != 32 {
		t.Fatalf("models %v", models)
	}
	if summaryInt(t, st, "experts_unavailable") != 0 || st["summary"].(map[string]any)["healthy"] != true {
		t.Fatalf("summary %v", st["summary"])
	}
	yout, _, err := runCmd(t, "status", "-o", "yaml")
	var y map[string]any
	if err != nil || yaml.Unmarshal([]byte(yout), &y) != nil || y["summary"] == nil {
		t.Fatalf("status -o yaml: %v\n%s", err, yout)
	}
	tout, _, err := runCmd(t, "status")
	if err != nil || !strings.Contains(tout, "NODE") || !strings.Contains(tout, "UNDER-REPLICATED") || !strings.Contains(tout, "mx") {
		t.Fatalf("status table: %v\n%s", err, tout)
	}

	// Drain store-0: with R=1 its blobs move to store-1, and status shows it empty.
	if _, _, err := runCmd(t, "drain", "store-0"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		st, _ = statusJSON(t, eps)
		stores := st["stores"].([]any)
		s0 := stores[0].(map[string]any)
		if s0["name"] == "store-0" && s0["draining"] == true && s0["blobs"].(float64) == 0 && summaryInt(t, st, "copies_in_flight") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store-0 never drained: %v", stores)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Kill the store that now holds everything (R=1): every expert loses its only replica, and
	// the exit status flips.
	if err := lc.KillStore("store-1"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		st, err = statusJSON(t, eps)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never failed after the only replicas died: %v", st["summary"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitUnhealthy {
		t.Fatalf("status error %v, want exit status %d", err, exitUnhealthy)
	}
	if summaryInt(t, st, "experts_unavailable") != 32 || st["summary"].(map[string]any)["healthy"] != false {
		t.Fatalf("summary after the kill: %v", st["summary"])
	}

	// Undo the drain: store-0 takes blobs again, but nothing can bring back the lost ones.
	if _, _, err := runCmd(t, "drain", "--undo", "store-0"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, "status", "--etcd-endpoints", "http://127.0.0.1:1", "--cluster", "x"); err == nil {
		t.Fatal("status against no etcd succeeded")
	}
}

// TestWorkerExitsOnModeMismatch: a worker asked to run a checkpoint without pre-gates in pregated
// mode exits with the reason instead of serving 503s forever.
func TestWorkerExitsOnModeMismatch(t *testing.T) {
	lc, err := cluster.Start(cluster.Config{Dir: t.TempDir(), Stores: 1, Replicas: 1, StoreCapacity: 64 << 20, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	eps := strings.Join(lc.EtcdEndpoints(), ",")
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, _ := statusJSON(t, eps)
		if summaryInt(t, st, "stores_alive") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("store never alive")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, stderr, err := runCmd(t, "import", "--etcd-endpoints", eps, "--model", "../../testdata/mixtral-tiny", "--name", "mx"); err != nil {
		t.Fatalf("import: %v\n%s", err, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := newRootCmd()
	cmd.SetArgs([]string{"worker", "--etcd-endpoints", eps, "--model", "mx", "--mode", "pregated", "--http", "127.0.0.1:0",
		"--no-gossip", "--data-dir", t.TempDir(), "--log-level", "error"})
	cmd.SetErr(new(nopWriter))
	err = cmd.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "pre-gate") || ctx.Err() != nil {
		t.Fatalf("worker returned %v (ctx %v), want the mode mismatch", err, ctx.Err())
	}
}

// TestCoordinatorExitsWhenEtcdIsUnreachable: `pregate coordinator` against an etcd nobody serves
// exits non-zero once --etcd-give-up has passed, saying why.
func TestCoordinatorExitsWhenEtcdIsUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + lis.Addr().String()
	lis.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := newRootCmd()
	cmd.SetArgs([]string{"coordinator", "--etcd-endpoints", dead, "--etcd-give-up", "1s", "--leader-ttl", "1",
		"--http", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--node-name", "c", "--log-level", "error"})
	cmd.SetErr(new(nopWriter))
	start := time.Now()
	err = cmd.ExecuteContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "etcd unreachable for 1s") || ctx.Err() != nil {
		t.Fatalf("coordinator returned %v (ctx %v), want etcd unreachable", err, ctx.Err())
	}
	t.Logf("exited after %v: %v", time.Since(start).Round(time.Millisecond), err)
}
