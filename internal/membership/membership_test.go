package membership

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger discards unless MEMBERSHIP_TEST_LOG is set (then debug to stderr). It must not be
// t.Log: memberlist goroutines can log briefly after Close returns, after the test has ended.
func testLogger() *slog.Logger {
	if os.Getenv("MEMBERSHIP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(name string, meta Meta, seeds ...string) Config {
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1"
	cfg.BindPort = 0
	cfg.Join = seeds
	cfg.Meta = meta
	cfg.Logger = testLogger()
	cfg.FastTimers()
	return cfg
}

func start(t *testing.T, cfg Config) *Member {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEvent reads m's events until one matches or the deadline passes.
func waitEvent(t *testing.T, m *Member, within time.Duration, what string, match func(Event) bool) Event {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-m.Events():
			if !ok {
				t.Fatalf("events closed while waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no event within %v: %s", within, what)
		}
	}
}

func find(nodes []Node, name string) (Node, bool) {
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// cluster starts a store, a worker and a coordinator, the last two joining the store.
func cluster(t *testing.T) (store, worker, coord *Member) {
	t.Helper()
	store = start(t, testConfig("s1", Meta{Role: RoleStore, GRPCAddr: "127.0.0.1:9001", DataAddr: "127.0.0.1:9101", Capacity: 1 << 30}))
	worker = start(t, testConfig("w1", Meta{Role: RoleWorker, GRPCAddr: "127.0.0.1:9002", HTTPAddr: "127.0.0.1:8080"}, store.Addr()))
	coord = start(t, testConfig("c1", Meta{Role: RoleCoordinator, GRPCAddr: "127.0.0.1:9003"}, store.Addr()))
	for _, m := range []*Member{store, worker, coord} {
		eventually(t, 3*time.Second, m.name+" sees 3 alive", func() bool {
			alive := 0
			for _, n := range m.Members() {
				if n.State == StateAlive {
					alive++
				}
			}
			return alive == 3
		})
	}
	return store, worker, coord
}

func TestThreeMembersSeeEachOther(t *testing.T) {
	store, worker, coord := cluster(t)
	for _, m := range []*Member{store, worker, coord} {
		nodes := m.Members()
		if len(nodes) != 3 || nodes[0].Name != "c1" || nodes[1].Name != "s1" || nodes[2].Name != "w1" {
			t.Fatalf("%s: Members = %+v, want c1, s1, w1", m.name, nodes)
		}
		s, _ := find(nodes, "s1")
		if s.Meta.Role != RoleStore || s.Meta.GRPCAddr != "127.0.0.1:9001" || s.Meta.Capacity != 1<<30 || s.Addr != store.Addr() {
			t.Errorf("%s sees s1 as %+v", m.name, s)
		}
		w, _ := find(nodes, "w1")
		if w.Meta.Role != RoleWorker || w.Meta.HTTPAddr != "127.0.0.1:8080" {
			t.Errorf("%s sees w1 as %+v", m.name, w)
		}
		if got := m.Alive(RoleStore); len(got) != 1 || got[0].Name != "s1" {
			t.Errorf("%s: Alive(store) = %+v", m.name, got)
		}
		if got := m.Alive(RoleCoordinator); len(got) != 1 || got[0].Name != "c1" {
			t.Errorf("%s: Alive(coordinator) = %+v", m.name, got)
		}
	}
	if ln := coord.LocalNode(); ln.Name != "c1" || ln.State != StateAlive || ln.Addr != coord.Addr() || ln.Meta.Epoch == 0 {
		t.Errorf("LocalNode = %+v", ln)
	}
	if host, port, err := net.SplitHostPort(store.Addr()); err != nil || host != "127.0.0.1" || port == "0" {
		t.Errorf("Addr = %q", store.Addr())
	}
	// The first event is the local node's own join.
	if ev := <-store.Events(); ev.Type != EventJoin || ev.Node.Name != "s1" {
		t.Errorf("first event = %+v", ev)
	}
}

func TestUpdateMetaIsGossiped(t *testing.T) {
	store, worker, coord := cluster(t)
	if err := store.UpdateMeta(func(m *Meta) { m.Used = 12345; m.Blobs = 7 }); err != nil {
		t.Fatal(err)
	}
	if got := store.LocalNode().Meta; got.Used != 12345 || got.Capacity != 1<<30 {
		t.Errorf("local meta after update = %+v", got)
	}
	for _, m := range []*Member{worker, coord} {
		ev := waitEvent(t, m, 3*time.Second, m.name+": update of s1", func(ev Event) bool {
			return ev.Type == EventUpdate && ev.Node.Name == "s1" && ev.Node.Meta.Used == 12345
		})
		if ev.Node.Meta.Blobs != 7 || ev.Node.Meta.GRPCAddr != "127.0.0.1:9001" {
			t.Errorf("%s: update event %+v", m.name, ev)
		}
		if n, _ := find(m.Members(), "s1"); n.Meta.Used != 12345 {
			t.Errorf("%s: Members has s1 meta %+v", m.name, n.Meta)
		}
	}
	// An update that does not fit changes nothing.
	err := store.UpdateMeta(func(m *Meta) { m.GRPCAddr = strings.Repeat("x", 600) })
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized update: %v", err)
	}
	if got := store.LocalNode().Meta.GRPCAddr; got != "127.0.0.1:9001" {
		t.Errorf("meta changed by a failed update: %q", got)
	}
}

func TestLeaveIsSeenAsLeft(t *testing.T) {
	store, worker, coord := cluster(t)
	if err := coord.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := coord.Leave(time.Second); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	if _, err := coord.Join([]string{store.Addr()}); !errors.Is(err, ErrLeft) {
		t.Errorf("Join after Leave: %v", err)
	}
	if err := coord.UpdateMeta(func(*Meta) {}); !errors.Is(err, ErrLeft) {
		t.Errorf("UpdateMeta after Leave: %v", err)
	}
	for _, m := range []*Member{store, worker} {
		ev := waitEvent(t, m, 3*time.Second, m.name+": leave of c1", func(ev Event) bool {
			return ev.Type == EventLeave && ev.Node.Name == "c1"
		})
		if ev.Node.State != StateLeft || ev.Node.Meta.Role != RoleCoordinator {
			t.Errorf("%s: leave event %+v", m.name, ev)
		}
		if n, ok := find(m.Members(), "c1"); !ok || n.State != StateLeft {
			t.Errorf("%s: Members has c1 as %+v (found %v)", m.name, n, ok)
		}
		if got := m.Alive(RoleCoordinator); len(got) != 0 {
			t.Errorf("%s: Alive(coordinator) = %+v after leave", m.name, got)
		}
	}
	if err := coord.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStopIsSeenAsStopped(t *testing.T) {
	store, worker, coord := cluster(t)
	if err := coord.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Member{store, worker} {
		ev := waitEvent(t, m, 3*time.Second, m.name+": stop of c1", func(ev Event) bool {
			return ev.Type == EventLeave && ev.Node.Name == "c1"
		})
		if ev.Node.State != StateStopped {
			t.Errorf("%s: leave event %+v, want state stopped", m.name, ev)
		}
		if n, ok := find(m.Members(), "c1"); !ok || n.State != StateStopped || n.State.String() != "stopped" {
			t.Errorf("%s: Members has c1 as %+v (found %v)", m.name, n, ok)
		}
	}
}

// TestJoinRetryWaitsForSeed starts a node whose seed, given by DNS name, comes up only later: New
// keeps trying and joins it; with no retry, or a seed that never comes, it fails naming the seed.
func TestJoinRetryWaitsForSeed(t *testing.T) {
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.LocalAddr().(*net.UDPAddr).Port
	l.Close()
	seed := fmt.Sprintf("localhost:%d", port)

	once := testConfig("w1", Meta{Role: RoleWorker}, seed)
	if _, err := New(once); !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), seed) {
		t.Fatalf("no retry, seed down: %v", err)
	}

	joined := make(chan *Member, 1)
	errc := make(chan error, 1)
	go func() {
		cfg := testConfig("w2", Meta{Role: RoleWorker}, seed)
		cfg.JoinRetry = 20 * time.Second
		m, err := New(cfg)
		if err != nil {
			errc <- err
			return
		}
		joined <- m
	}()
	time.Sleep(1500 * time.Millisecond) // the first attempts fail
	scfg := testConfig("s1", Meta{Role: RoleStore})
	scfg.BindPort = port
	s := start(t, scfg)
	select {
	case m := <-joined:
		defer m.Close()
		eventually(t, 3*time.Second, "w2 sees s1", func() bool { return len(m.Alive(RoleStore)) == 1 })
		eventually(t, 3*time.Second, "s1 sees w2", func() bool { return len(s.Alive(RoleWorker)) == 1 })
	case err := <-errc:
		t.Fatalf("retrying join: %v", err)
	case <-time.After(25 * time.Second):
		t.Fatal("retrying join did not return")
	}
}

func TestKilledNodeIsSeenDead(t *testing.T) {
	store, worker, coord := cluster(t)
	killed := time.Now()
	if err := coord.Kill(); err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	for _, m := range []*Member{store, worker} {
		ev := waitEvent(t, m, 5*time.Second, m.name+": c1 dead", func(ev Event) bool {
			return ev.Type == EventLeave && ev.Node.Name == "c1"
		})
		took = max(took, time.Since(killed))
		if ev.Node.State != StateDead {
			t.Errorf("%s: event %+v, want state dead", m.name, ev)
		}
		if n, _ := find(m.Members(), "c1"); n.State != StateDead {
			t.Errorf("%s: Members has c1 as %+v", m.name, n)
		}
	}
	t.Logf("failure detected by both in %v", took)
	if took > 2*time.Second {
		t.Errorf("detection took %v, FastTimers promises under 2 s", took)
	}
}

func TestEncryption(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	other := bytes.Repeat([]byte{2}, 16)

	cfgA := testConfig("a", Meta{Role: RoleStore})
	cfgA.SecretKey = key
	a := start(t, cfgA)
	cfgB := testConfig("b", Meta{Role: RoleWorker}, a.Addr())
	cfgB.SecretKey = key
	b := start(t, cfgB)
	eventually(t, 3*time.Second, "a sees b", func() bool { _, ok := find(a.Members(), "b"); return ok })

	cfgC := testConfig("c", Meta{Role: RoleWorker}, a.Addr())
	cfgC.SecretKey = other
	c, err := New(cfgC)
	if err == nil {
		c.Close()
		t.Fatal("member with another key joined")
	}
	if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), a.Addr()) {
		t.Errorf("error %q should wrap ErrJoin and name the seed %s", err, a.Addr())
	}
	t.Logf("refused: %v", err)
	cfgD := testConfig("d", Meta{Role: RoleWorker}, a.Addr()) // no key at all
	if d, err := New(cfgD); err == nil {
		d.Close()
		t.Fatal("member without a key joined an encrypted cluster")
	}
	if _, ok := find(b.Members(), "c"); ok {
		t.Error("b learned of c")
	}
}

func TestJoinUnreachableSeed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	_, err = New(testConfig("lonely", Meta{Role: RoleStore}, dead))
	if !errors.Is(err, ErrJoin) || !strings.Contains(err.Error(), dead) {
		t.Fatalf("New with dead seed: %v", err)
	}
	// Joining nobody is fine, and Join of an empty list is a no-op.
	m := start(t, testConfig("first", Meta{Role: RoleStore}))
	if n, err := m.Join(nil); n != 0 || err != nil {
		t.Errorf("Join(nil) = %d, %v", n, err)
	}
}

func TestEventsNeverBlockMemberlist(t *testing.T) {
	cfg := testConfig("obs", Meta{Role: RoleCoordinator})
	cfg.EventBuffer = 1
	obs := start(t, cfg) // nobody reads obs.Events()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 3 {
			m, err := New(testConfig(fmt.Sprintf("churn%d", i), Meta{Role: RoleStore}, obs.Addr()))
			if err != nil {
				t.Error(err)
				return
			}
			for j := range 3 {
				if err := m.UpdateMeta(func(mt *Meta) { mt.Used = int64(j + 1) }); err != nil {
					t.Error(err)
				}
			}
			if err := m.Close(); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("churn did not complete: memberlist blocked?")
	}
	eventually(t, 3*time.Second, "obs records all churn nodes as left", func() bool {
		left := 0
		for _, n := range obs.Members() {
			if n.State == StateLeft {
				left++
			}
		}
		return left == 3
	})
	if obs.Dropped() == 0 {
		t.Error("Dropped() = 0 with a 1-slot buffer nobody reads")
	}
	// The one buffered event is the newest, not the first.
	ev := <-obs.Events()
	if ev.Type == EventJoin && ev.Node.Name == "obs" {
		t.Errorf("buffer kept the oldest event: %+v", ev)
	}
	t.Logf("dropped %d events", obs.Dropped())
}

func TestCloseIsIdempotentAndFinal(t *testing.T) {
	m, err := New(testConfig("x", Meta{Role: RoleWorker}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := m.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := m.Close(); err != nil {
		t.Error(err)
	}
	for range m.Events() { // drains, then ends: the channel is closed
	}
	if err := m.Leave(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Close: %v", err)
	}
	if _, err := m.Join([]string{"127.0.0.1:1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close: %v", err)
	}
	if err := m.UpdateMeta(func(*Meta) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("UpdateMeta after Close: %v", err)
	}
	if ln := m.LocalNode(); ln.Name != "x" || ln.State != StateLeft {
		t.Errorf("LocalNode after Close = %+v", ln)
	}
}

func TestMetaEncoding(t *testing.T) {
	in := Meta{Role: RoleStore, GRPCAddr: "10.0.0.1:9000", DataAddr: "10.0.0.1:9100", Capacity: 64 << 30, Used: 1 << 30, Blobs: 12, Epoch: 1700000000000}
	b, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeMeta(b)
	if err != nil || out != in {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	if _, err := DecodeMeta([]byte(`{"r":"store","zz":1}`)); err != nil {
		t.Errorf("unknown field rejected: %v", err)
	}

	big := Meta{Role: RoleStore, GRPCAddr: strings.Repeat("a", 520)}
	_, err = big.Encode()
	if !errors.Is(err, ErrMetaTooLarge) || !strings.Contains(err.Error(), "512") || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("oversized Encode: %v", err)
	}
	cfg := testConfig("big", big)
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) || !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("New with oversized meta: %v", err)
	}

	for _, garbage := range [][]byte{nil, []byte("garbage"), {0xff, 0x00}, []byte(`{"r":"store"} x`), []byte(`{}`), []byte(`[1]`)} {
		if _, err := DecodeMeta(garbage); !errors.Is(err, ErrBadMeta) {
			t.Errorf("DecodeMeta(%q) = %v", garbage, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.NodeName = "n"
	good.Meta = Meta{Role: RoleStore}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"no name":          func(c *Config) { c.NodeName = "" },
		"bind addr":        func(c *Config) { c.BindAddr = "localhost" },
		"bind port":        func(c *Config) { c.BindPort = 70000 },
		"advertise addr":   func(c *Config) { c.AdvertiseAddr = "host" },
		"key length":       func(c *Config) { c.SecretKey = make([]byte, 10) },
		"role":             func(c *Config) { c.Meta.Role = "gpu" },
		"negative timer":   func(c *Config) { c.ProbeInterval = -time.Second },
		"timeout≥interval": func(c *Config) { c.ProbeTimeout = 2 * time.Second },
		"event buffer":     func(c *Config) { c.EventBuffer = -1 },
		"empty seed":       func(c *Config) { c.Join = []string{""} },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	var zero Config // zero timers mean defaults
	zero.NodeName, zero.Meta.Role = "n", RoleWorker
	if err := zero.Validate(); err != nil {
		t.Errorf("zero-value timers: %v", err)
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := []byte("0123456789abcdef0123456789abcdef")[:32]
	raw := bytes.Repeat([]byte{0xa5, 0x00, 0xff, 0x10}, 4) // 16 bytes, not base64 text

	got, err := LoadKey(write("b64", []byte(base64.StdEncoding.EncodeToString(key)+"\n")))
	if err != nil || !bytes.Equal(got, key) {
		t.Errorf("base64 key: %x, %v", got, err)
	}
	got, err = LoadKey(write("raw", raw))
	if err != nil || !bytes.Equal(got, raw) {
		t.Errorf("raw key: %x, %v", got, err)
	}
	for name, data := range map[string][]byte{
		"short-b64": []byte(base64.StdEncoding.EncodeToString(make([]byte, 20))),
		"short-raw": {1, 2, 3, 0xff},
		"empty":     nil,
	} {
		p := write(name, data)
		if _, err := LoadKey(p); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", name, err)
		}
	}
	missing := filepath.Join(dir, "missing")
	if _, err := LoadKey(missing); !errors.Is(err, ErrBadKey) || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
}

// captureHandler records slog records.
type captureHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }

func TestMemberlistLogBridge(t *testing.T) {
	h := &captureHandler{}
	l := newMemberlistLogger(slog.New(h))
	l.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
	l.Printf("[WARN] memberlist: Refuting a suspect message (from: x)")
	l.Printf("[ERR] memberlist.net: failed: boom")
	l.Printf("Err: Could not set the deadline: x")
	l.Printf("[ERR] memberlist: Failed to send gossip to 127.0.0.1:1: write udp 127.0.0.1:2->127.0.0.1:1: use of closed network connection")
	want := []struct {
		level     slog.Level
		msg, comp string
	}{
		{slog.LevelDebug, "Stream connection from=127.0.0.1:1", "memberlist"},
		{slog.LevelWarn, "Refuting a suspect message (from: x)", "memberlist"},
		{slog.LevelError, "failed: boom", "memberlist.net"},
		{slog.LevelInfo, "Err: Could not set the deadline: x", "memberlist"},
		{slog.LevelDebug, "Failed to send gossip to 127.0.0.1:1: write udp 127.0.0.1:2->127.0.0.1:1: use of closed network connection", "memberlist"},
	}
	if len(h.recs) != len(want) {
		t.Fatalf("got %d records", len(h.recs))
	}
	for i, w := range want {
		r := h.recs[i]
		var comp string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "component" {
				comp = a.Value.String()
			}
			return true
		})
		if r.Level != w.level || r.Message != w.msg || comp != w.comp {
			t.Errorf("record %d: %v %q component=%q, want %v %q %q", i, r.Level, r.Message, comp, w.level, w.msg, w.comp)
		}
	}
}

func TestStrings(t *testing.T) {
	if StateLeft.String() != "left" || StateSuspect.String() != "suspect" || State(9).String() != "State(9)" {
		t.Error("State.String")
	}
	if EventLeave.String() != "leave" || EventType(7).String() != "EventType(7)" {
		t.Error("EventType.String")
	}
}

// lockedBuffer is a bytes.Buffer safe for memberlist's goroutines to log into.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func TestLogsCarryNodeName(t *testing.T) {
	var buf lockedBuffer
	cfg := testConfig("logged", Meta{Role: RoleStore})
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	// memberlist logs its dynamic port at debug; ours logs start and close.
	for _, want := range []string{"level=DEBUG msg=\"Using dynamic bind port", "component=memberlist", "node=logged", "msg=\"membership closed\""} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// TestKeyRotation rotates the gossip key of a running cluster through its key files, the three
// steps docs/SECURITY.md gives (add the new key second, make it first, drop the old), and checks
// that no node is lost on the way, that a node with only the new key joins after it, and that one
// with only the old key no longer can.
func TestKeyRotation(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 32)
	b64 := base64.StdEncoding.EncodeToString
	dir := t.TempDir()
	write := func(path string, keys ...[]byte) {
		t.Helper()
		var text string
		for _, k := range keys {
			text += b64(k) + "\n"
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	var members []*Member
	var files []string
	for i, name := range []string{"s1", "s2", "s3"} {
		f := filepath.Join(dir, name+".key")
		write(f, oldKey)
		var seeds []string
		if i > 0 {
			seeds = []string{members[0].Addr()}
		}
		cfg := testConfig(name, Meta{Role: RoleStore}, seeds...)
		cfg.KeyFile, cfg.KeyReload = f, 50*time.Millisecond
		members, files = append(members, start(t, cfg)), append(files, f)
	}
	allAlive := func(n int) func() bool {
		return func() bool {
			for _, m := range members {
				if len(m.Alive(RoleStore)) != n {
					return false
				}
			}
			return true
		}
	}
	eventually(t, 5*time.Second, "3 stores see each other", allAlive(3))
	for step, keys := range [][][]byte{{oldKey, newKey}, {newKey, oldKey}, {newKey}} {
		for _, f := range files {
			write(f, keys...)
		}
		time.Sleep(300 * time.Millisecond) // several reloads and probe rounds
		eventually(t, 5*time.Second, fmt.Sprintf("step %d: still 3 stores, all alive", step+1), allAlive(3))
	}
	joiner := testConfig("s4", Meta{Role: RoleStore}, members[0].Addr())
	joiner.SecretKey = newKey
	start(t, joiner)
	eventually(t, 5*time.Second, "a node with only the new key joined", allAlive(4))
	stale := testConfig("s5", Meta{Role: RoleStore}, members[0].Addr())
	stale.SecretKey = oldKey
	if m, err := New(stale); err == nil {
		m.Close()
		t.Fatal("a node with only the retired key joined")
	}
	// A broken file keeps the keyring: the cluster stays whole.
	if err := os.WriteFile(files[0], []byte("not a key\nnor this\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	eventually(t, 5*time.Second, "still 4 stores after a broken key file", allAlive(4))
}
