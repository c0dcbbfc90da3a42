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

// TestMain checks that nothing leaks, except what etcd itself leaves between the members of a
// cluster of several: the keep-alive HTTP connections of its peers' version probes, which its
// Close does not close (they end with the process).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).abortPendingRead"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"))
}

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

// freePort returns a port free on 127.0.0.1 now (an initial cluster names its peers' URLs before
// they listen).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

// TestThreeMembers runs a cluster of three members, as three coordinators do: it serves with one
// member down, refuses writes without a quorum, and a member restarted on its data dir rejoins.
func TestThreeMembers(t *testing.T) {
	names := []string{"c0", "c1", "c2"}
	cfgs := make([]Config, 3)
	var initial []string
	for i, n := range names {
		cfgs[i] = testConfig(t)
		cfgs[i].Name = n
		cfgs[i].ClientURL = "http://127.0.0.1:" + freePort(t)
		cfgs[i].PeerURL = "http://127.0.0.1:" + freePort(t)
		initial = append(initial, n+"="+cfgs[i].PeerURL)
	}
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
	}
	// The members bootstrap together: each Start waits for the quorum the others complete.
	servers := make([]*Server, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = Start(cfgs[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		t.Cleanup(func() { servers[i].Close() })
	}
	var all []string
	for _, s := range servers {
		all = append(all, s.Endpoints()...)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: all, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put := func(v string, within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		_, err := cli.Put(ctx, "/k", v)
		return err
	}
	if err := put("3 up", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ml, err := cli.MemberList(context.Background())
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %v, %v", ml, err)
	}

	servers[0].Close()
	if err := put("2 up", 10*time.Second); err != nil {
		t.Fatalf("a write with one member of three down: %v", err)
	}
	servers[1].Close()
	if err := put("1 up", 2*time.Second); err == nil {
		t.Fatal("a write without a quorum succeeded")
	}

	cfgs[0].InitialCluster = "" // a restart reads its membership from its data dir
	s0, err := Start(cfgs[0])
	if err != nil {
		t.Fatalf("restart c0: %v", err)
	}
	defer s0.Close()
	deadline := time.Now().Add(15 * time.Second)
	for put("quorum back", 2*time.Second) != nil {
		if time.Now().After(deadline) {
			t.Fatal("no quorum after c0 came back")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := clientv3.NewKV(cli).Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "quorum back" {
		t.Fatalf("read after the quorum came back: %v, %v", resp, err)
	}
}

func TestInitialClusterErrors(t *testing.T) {
	cfg := testConfig(t)
	for _, bad := range []string{"c0", "c0=", "=http://127.0.0.1:1", "c0=ftp://x:1", "c0=http://127.0.0.1:1,c0=http://127.0.0.1:2"} {
		cfg.InitialCluster = bad
		if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "InitialCluster") {
			t.Errorf("InitialCluster %q: %v", bad, err)
		}
	}
	cfg.InitialCluster, cfg.ClusterState = "", "maybe"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "maybe") {
		t.Errorf("ClusterState maybe: %v", err)
	}
}
