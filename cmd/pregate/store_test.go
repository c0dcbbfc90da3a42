package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
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
