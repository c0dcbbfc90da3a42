package embedetcd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testConfig returns a config on free ports in a fresh temp dir.
func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.ClientURL, cfg.PeerURL = "", ""
	cfg.StartTimeout = 10 * time.Second
	cfg.UnsafeNoFsync = true
	return cfg
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func client(t *testing.T, s *Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func TestRestartKeepsData(t *testing.T) {
	cfg := testConfig(t)
	s := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cli := client(t, s)
	if _, err := cli.Put(ctx, "/k", "v1"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, ok := <-s.Err(); ok {
		t.Fatal("Err not closed after Close")
	}

	s2 := startServer(t, cfg) // same dir, new free ports
	cli = client(t, s2)
	defer cli.Close()
	resp, err := cli.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("after restart got %v, want v1", resp.Kvs)
	}
}

func TestEndpointsAreListening(t *testing.T) {
	s := startServer(t, testConfig(t))
	eps := s.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") || strings.HasSuffix(eps[0], ":0") {
		t.Fatalf("Endpoints() = %v", eps)
	}
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(eps[0], "http://"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestStartFailsCleanlyOnTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := testConfig(t)
	cfg.ClientURL = "http://" + l.Addr().String()
	if s, err := Start(cfg); err == nil {
		s.Close()
		t.Fatal("Start on a taken port succeeded")
	} else if !errors.Is(err, ErrStart) {
		t.Fatalf("err = %v, want ErrStart", err)
	}
}

func TestLoggerGetsErrorsOnly(t *testing.T) {
	var buf syncBuffer
	cfg := testConfig(t)
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startServer(t, cfg)
	s.Close()
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		// Our own "ready" line is info; etcd's info and warn lines must not come through; the errors
		// etcd logs while Close shuts its listeners are demoted to debug.
		if line != "" && !strings.Contains(line, "level=ERROR") && !strings.Contains(line, "embedded etcd ready") && !strings.Contains(line, "level=DEBUG") {
			t.Errorf("unexpected log line: %s", line)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		give func(*Config)
		ok   bool
	}{
		{"default with dir", func(c *Config) {}, true},
		{"no dir", func(c *Config) { c.Dir = "" }, false},
		{"free ports", func(c *Config) { c.ClientURL, c.PeerURL = "", "http://127.0.0.1:0" }, true},
		{"https", func(c *Config) { c.ClientURL = "https://127.0.0.1:2379" }, false},
		{"hostname", func(c *Config) { c.PeerURL = "http://localhost:2380" }, false},
		{"no port", func(c *Config) { c.ClientURL = "http://127.0.0.1" }, false},
		{"path", func(c *Config) { c.ClientURL = "http://127.0.0.1:1/x" }, false},
		{"negative timeout", func(c *Config) { c.StartTimeout = -1 }, false},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.Dir = "/tmp/x"
		tt.give(&cfg)
		err := cfg.Validate()
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
