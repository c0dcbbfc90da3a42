package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/tlsutil"
)

func TestStoreCommandWithEnvFallbacks(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(t.TempDir(), "ready.json")
	t.Setenv("PREGATE_DATA_DIR", dir)
	t.Setenv("PREGATE_MEMORY_LIMIT", "64MiB")
	t.Setenv("PREGATE_NODE_NAME", "env-store")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	cmd.SetArgs([]string{"store", "--listen", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0", "--ready-file", ready, "--log-level", "error"})
	cmd.SetErr(new(nopWriter))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	var addrs map[string]string
	for {
		b, err := os.ReadFile(ready)
		if err == nil && json.Unmarshal(b, &addrs) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("store never wrote its ready file")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if addrs["node"] != "env-store" || addrs["grpc"] == "" || addrs["data"] == "" || addrs["gossip"] == "" {
		t.Fatalf("ready file %v", addrs)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs")); err != nil {
		t.Fatalf("PREGATE_DATA_DIR not used: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("store exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("store did not stop on cancel")
	}
	t.Setenv("PREGATE_MEMORY_LIMIT", "lots")
	if _, _, err := runCmd(t, "store", "--no-gossip"); err == nil {
		t.Fatal("bad PREGATE_MEMORY_LIMIT accepted")
	}
}

type nopWriter struct{}

func (*nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestFlagsListsEveryFlagAndVariable checks `pregate flags`, what the chart's tests check the
// chart's command lines against: daemons' flags with their PREGATE_* variables, and none for
// commands that do not read the environment.
func TestFlagsListsEveryFlagAndVariable(t *testing.T) {
	out, _, err := runCmd(t, "flags")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string][]flagInfo
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	find := func(cmd, name string) (flagInfo, bool) {
		for _, f := range got[cmd] {
			if f.Name == name {
				return f, true
			}
		}
		return flagInfo{}, false
	}
	for _, c := range []struct{ cmd, flag, env string }{
		{"store", "advertise-host", "PREGATE_ADVERTISE_HOST"}, {"store", "data-listen", "PREGATE_DATA_LISTEN"},
		{"coordinator", "etcd-initial-cluster", "PREGATE_ETCD_INITIAL_CLUSTER"}, {"worker", "shutdown-timeout", "PREGATE_SHUTDOWN_TIMEOUT"},
		{"import", "coordinator", "PREGATE_COORDINATOR"}, {"generate", "model", ""}, {"bench fetch", "size", ""},
	} {
		f, ok := find(c.cmd, c.flag)
		if !ok || f.Env != c.env {
			t.Errorf("%s --%s: %+v (found %v), want env %q", c.cmd, c.flag, f, ok, c.env)
		}
	}
	if f, _ := find("store", "listen"); f.Default != "0.0.0.0:7070" {
		t.Errorf("store --listen default %q", f.Default)
	}
}

// TestCertsCommands creates a CA and a store certificate with `pregate certs`, checks the
// identity it carries, that a CA is never overwritten, and that a store given half the TLS files
// says which are missing.
func TestCertsCommands(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, err := runCmd(t, "certs", "ca", "--dir", dir); err != nil {
		t.Fatalf("certs ca: %v %s", err, stderr)
	}
	if _, _, err := runCmd(t, "certs", "ca", "--dir", dir); err == nil || !strings.Contains(err.Error(), "keeps its CA") {
		t.Errorf("a second certs ca: %v", err)
	}
	if _, stderr, err := runCmd(t, "certs", "issue", "--dir", dir, "--role", "store", "--name", "store-0", "--host", "10.0.0.5,store-0.pregate-store"); err != nil {
		t.Fatalf("certs issue: %v %s", err, stderr)
	}
	if _, _, err := runCmd(t, "certs", "issue", "--dir", dir, "--role", "emperor", "--name", "x"); err == nil {
		t.Error("a certificate for an unknown role was issued")
	}
	r, err := tlsutil.Load(tlsutil.Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "store-0.crt"), Key: filepath.Join(dir, "store-0.key")})
	if err != nil {
		t.Fatal(err)
	}
	if id := r.Identity(); id != (tlsutil.Identity{Role: "store", Name: "store-0"}) {
		t.Errorf("identity %v", id)
	}
	if st, err := os.Stat(filepath.Join(dir, "store-0.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the key file's mode: %v %v", st.Mode(), err)
	}
	if _, _, err := runCmd(t, "store", "--no-gossip", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--http", "",
		"--tls-ca", filepath.Join(dir, "ca.crt")); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Errorf("a store with a CA and no certificate: %v", err)
	}
	// With TLS, gossip needs its key; `certs gossip-key` makes one (and never overwrites it).
	tlsArgs := []string{"--tls-ca", filepath.Join(dir, "ca.crt"), "--tls-cert", filepath.Join(dir, "store-0.crt"), "--tls-key", filepath.Join(dir, "store-0.key")}
	if _, _, err := runCmd(t, append([]string{"store", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--http", "",
		"--gossip-addr", "127.0.0.1:0"}, tlsArgs...)...); err == nil || !strings.Contains(err.Error(), "--gossip-key-file is required with TLS") {
		t.Errorf("a store with TLS and no gossip key: %v", err)
	}
	key := filepath.Join(dir, "gossip.key")
	if _, stderr, err := runCmd(t, "certs", "gossip-key", "--out", key); err != nil {
		t.Fatalf("certs gossip-key: %v %s", err, stderr)
	}
	if keys, err := membership.LoadKeys(key); err != nil || len(keys) != 1 || len(keys[0]) != 32 {
		t.Errorf("the gossip key file: %d keys, %v", len(keys), err)
	}
	if _, _, err := runCmd(t, "certs", "gossip-key", "--out", key); err == nil {
		t.Error("certs gossip-key overwrote a key file")
	}
}
