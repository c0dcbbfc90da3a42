package expertstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cluster is three (or n) stores on 127.0.0.1 with real gRPC and real memberlist.
type cluster struct {
	t      *testing.T
	stores []*expertstore.Server
	dirs   []string
	gossip []string
}

func storeConfig(name, dir string, join []string) expertstore.Config {
	cfg := expertstore.DefaultConfig()
	cfg.NodeName = name
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.MemoryLimit = 256 << 20
	cfg.MaxBlobBytes = 64 << 20
	cfg.MaxInflightBytes = 128 << 20
	cfg.ChunkSize = 64 << 10
	g := membership.DefaultConfig()
	g.BindAddr = "127.0.0.1"
	g.BindPort = 0
	g.Join = join
	g.FastTimers()
	cfg.Gossip = &g
	return cfg
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{t: t}
	for i := range n {
		dir := t.TempDir()
		s, err := expertstore.New(storeConfig(fmt.Sprintf("store-%d", i), dir, c.gossip))
		if err != nil {
			t.Fatal(err)
		}
		c.stores = append(c.stores, s)
		c.dirs = append(c.dirs, dir)
		c.gossip = append(c.gossip, s.Member().Addr())
	}
	t.Cleanup(func() {
		for _, s := range c.stores {
			s.Close()
		}
	})
	return c
}

func replicaOf(s *expertstore.Server) routing.Replica {
	return routing.Replica{Store: s.NodeName(), GRPCAddr: s.Addr(), DataAddr: s.DataAddr()}
}

func (c *cluster) replicas(idx ...int) []routing.Replica {
	var out []routing.Replica
	for _, i := range idx {
		out = append(out, replicaOf(c.stores[i]))
	}
	return out
}

func newClient(t *testing.T, cfg client.Config) *client.Client {
	cl := client.New(cfg)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// expertBlob builds a blob of one expert whose two tensors have the given dtype.
func expertBlob(t *testing.T, dtype string, elem, rows, cols int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	mk := func(name string, shape []int) blob.Tensor {
		data := make([]byte, shape[0]*shape[1]*elem)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		return blob.Tensor{Name: name, DType: dtype, Shape: shape, Data: data}
	}
	b, err := blob.Build(blob.Header{Kind: blob.KindExpert, Model: "m", Block: 1, Expert: int(seed)},
		[]blob.Tensor{mk("wi", []int{rows, cols}), mk("wo", []int{cols, rows})})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutFetchEveryDType(t *testing.T) {
	c := newCluster(t, 3)
	cl := newClient(t, client.DefaultConfig())
	grpcCl := newClient(t, client.Config{Transport: client.NewGRPCTransport(client.NewConns(), 64<<10)})
	ctx := context.Background()
	for i, dt := range []struct {
		name string
		elem int
	}{{"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I64", 8}, {"I32", 4}, {"U8", 1}} {
		data := expertBlob(t, dt.name, dt.elem, 96, 160, uint64(i))
		ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
		info, existed, err := cl.Put(ctx, replicaOf(c.stores[i%3]), data)
		if err != nil {
			t.Fatalf("%s: put: %v", dt.name, err)
		}
		if existed || info.Digest != ref.Digest || info.Kind != "expert" || info.Expert != i || info.Size != ref.Size {
			t.Fatalf("%s: put response %+v, existed %v", dt.name, info, existed)
		}
		if _, again, err := cl.Put(ctx, replicaOf(c.stores[i%3]), data); err != nil || !again {
			t.Fatalf("%s: second put: existed %v, %v (want existed)", dt.name, again, err)
		}
		for _, fc := range []*client.Client{cl, grpcCl} {
			dst := make([]byte, len(data))
			if err := fc.Fetch(ctx, ref, c.replicas(i%3), dst); err != nil {
				t.Fatalf("%s: fetch: %v", dt.name, err)
			}
			if !slices.Equal(dst, data) {
				t.Fatalf("%s: fetched bytes differ", dt.name)
			}
			h, tensorData, err := blob.Parse(dst)
			if err != nil || len(h.Tensors) != 2 || h.Tensors[0].DType != dt.name {
				t.Fatalf("%s: fetched blob header %+v, %v", dt.name, h, err)
			}
			_ = tensorData
		}
	}
	// Stats and List see them.
	r0 := replicaOf(c.stores[0])
	list, err := cl.List(ctx, r0, "m")
	if err != nil || len(list) != 3 {
		t.Fatalf("List on store-0: %v blobs, %v (want 3)", len(list), err)
	}
	if st, err := cl.Stats(ctx, r0); err != nil || st.Node != "store-0" || st.Blobs != 3 || st.DataAddr != r0.DataAddr {
		t.Fatalf("Stats on store-0: %+v, %v", st, err)
	}
	// Has, Delete, Has again; health.
	d := list[0].Digest
	missing := blob.Sum([]byte("missing"))
	if has, err := cl.Has(ctx, r0, d, missing); err != nil || !slices.Equal(has, []bool{true, false}) {
		t.Fatalf("Has = %v, %v", has, err)
	}
	if deleted, err := cl.Delete(ctx, r0, d); err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if has, err := cl.Has(ctx, r0, d); err != nil || has[0] {
		t.Fatalf("Has after Delete = %v, %v", has, err)
	}
	if deleted, err := cl.Delete(ctx, r0, d); err != nil || deleted {
		t.Fatalf("second Delete = %v, %v (want false, nil)", deleted, err)
	}
	if _, err := os.Stat(filepath.Join(c.dirs[0], "blobs", d.String()+".blob")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted blob still on disk: %v", err)
	}
	conns := client.NewConns()
	defer conns.Close()
	cc, err := conns.Conn(c.stores[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	hr, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: storepb.ExpertStore_ServiceDesc.ServiceName})
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v, %v", hr, err)
	}
}

func TestErrorsMapToCodes(t *testing.T) {
	c := newCluster(t, 1)
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	r := replicaOf(c.stores[0])
	data := expertBlob(t, "F32", 4, 8, 8, 1)
	if _, _, err := cl.Put(ctx, r, data); err != nil {
		t.Fatal(err)
	}
	conns := client.NewConns() // the raw API: this test checks the codes on the wire
	defer conns.Close()
	api, _ := conns.Store(r)
	d := blob.Sum(data)

	fetch := func(req *storepb.FetchRequest) error {
		s, err := api.Fetch(ctx, req)
		if err != nil {
			return err
		}
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	big := make([]byte, 65<<20)
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		sentinel error
	}{
		{"oversized put", func() error { _, _, err := cl.Put(ctx, r, big); return err }(), codes.ResourceExhausted, storepb.ErrTooLarge},
		{"unknown blob", fetch(&storepb.FetchRequest{Digest: blob.Sum([]byte("nope")).String()}), codes.NotFound, storepb.ErrNotFound},
		{"bad range", fetch(&storepb.FetchRequest{Digest: d.String(), Offset: int64(len(data)) - 4, Length: 8}), codes.OutOfRange, storepb.ErrBadRange},
		{"bad digest", fetch(&storepb.FetchRequest{Digest: "xyz"}), codes.InvalidArgument, storepb.ErrBadRequest},
		{"unknown blob over the data plane", cl.Fetch(ctx, client.Ref{Digest: blob.Sum([]byte("nope")), Size: 4}, []routing.Replica{r}, make([]byte, 4)), codes.Unknown, storepb.ErrNotFound},
	}
	for _, tt := range tests {
		if tt.code != codes.Unknown && status.Code(tt.err) != tt.code {
			t.Errorf("%s: code %v (%v), want %v", tt.name, status.Code(tt.err), tt.err, tt.code)
		}
		if !errors.Is(storepb.FromStatus(tt.err), tt.sentinel) {
			t.Errorf("%s: %v is not %v", tt.name, tt.err, tt.sentinel)
		}
	}
	// Over the in-flight bound: a range fetch bigger than the bound is refused with RESOURCE_EXHAUSTED.
	small := storeConfig("tiny", t.TempDir(), nil)
	small.Gossip = nil
	small.MaxInflightBytes = 100
	s2, err := expertstore.New(small)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_, _, err = cl.Put(ctx, replicaOf(s2), data)
	if status.Code(err) != codes.ResourceExhausted || !errors.Is(err, storepb.ErrOverloaded) {
		t.Fatalf("put over the in-flight bound: %v", err)
	}
}

// proxy forwards TCP to a target, optionally flipping one bit at a byte offset of the server's
// answer, or throttling it: a fault injector between client and store.
type proxy struct {
	lis      net.Listener
	target   string
	flipAt   int64 // -1: none
	throttle time.Duration
	wg       sync.WaitGroup
	flipped  atomic.Bool
	mu       sync.Mutex
	conns    []net.Conn // closed at cleanup: a client may keep an idle connection open
}

func newProxy(t *testing.T, target string, flipAt int64, throttle time.Duration) *proxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target, flipAt: flipAt, throttle: throttle}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer p.wg.Done(); p.pipe(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) pipe(dst net.Conn, src net.Conn) {
	buf := make([]byte, 16<<10)
	var pos int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if p.flipAt >= pos && p.flipAt < pos+int64(n) && !p.flipped.Swap(true) {
				buf[p.flipAt-pos] ^= 0x10
			}
			pos += int64(n)
			if p.throttle > 0 {
				time.Sleep(p.throttle)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func TestCorruptionInFlightFailsOver(t *testing.T) {
	c := newCluster(t, 2)
	cl := newClient(t, client.Config{AttemptTimeout: 5 * time.Second})
	ctx := context.Background()
	data := expertBlob(t, "BF16", 2, 256, 512, 3)
	for i := range 2 {
		if _, _, err := cl.Put(ctx, replicaOf(c.stores[i]), data); err != nil {
			t.Fatal(err)
		}
	}
	// The first replica's answer has one bit flipped in the middle of the blob.
	p := newProxy(t, c.stores[0].DataAddr(), 200_000, 0)
	bad := replicaOf(c.stores[0])
	bad.DataAddr = p.addr()
	dst := make([]byte, len(data))
	if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}, []routing.Replica{bad, replicaOf(c.stores[1])}, dst); err != nil {
		t.Fatal(err)
	}
	if !p.flipped.Load() {
		t.Fatal("the proxy flipped nothing")
	}
	if !slices.Equal(dst, data) {
		t.Fatal("fetched bytes differ after failover")
	}
	if st := cl.FetchStats(); st.Failovers != 1 {
		t.Fatalf("stats %+v: want one failover", st)
	}
	// With only the corrupting replica, the fetch fails as corrupt.
	p2 := newProxy(t, c.stores[0].DataAddr(), 70_000, 0)
	bad.DataAddr = p2.addr()
	err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}, []routing.Replica{bad}, dst)
	if !errors.Is(err, storepb.ErrCorrupt) {
		t.Fatalf("fetch from a corrupting replica: %v, want ErrCorrupt", err)
	}
}

// A ranged fetch has no digest to compare with: its chunks' CRC32Cs are what catch a flipped bit.
func TestCorruptionInRangedFetch(t *testing.T) {
	c := newCluster(t, 1)
	cl := newClient(t, client.Config{})
	ctx := context.Background()
	data := expertBlob(t, "BF16", 2, 256, 512, 3)
	if _, _, err := cl.Put(ctx, replicaOf(c.stores[0]), data); err != nil {
		t.Fatal(err)
	}
	tr := client.NewDataTransport(client.DataTransportConfig{Compression: client.CompressNever})
	defer tr.Close()
	off := int64(len(data) / 4)
	dst := make([]byte, len(data)/2)
	r := replicaOf(c.stores[0])
	if err := tr.Fetch(ctx, r, blob.Sum(data), off, dst, false); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dst, data[off:off+int64(len(dst))]) {
		t.Fatal("ranged fetch returned other bytes")
	}
	p := newProxy(t, c.stores[0].DataAddr(), 70_000, 0)
	r.DataAddr = p.addr()
	err := tr.Fetch(ctx, r, blob.Sum(data), off, dst, false)
	if !p.flipped.Load() {
		t.Fatal("the proxy flipped nothing")
	}
	if !errors.Is(err, storepb.ErrCorrupt) || !strings.Contains(err.Error(), "CRC32C") {
		t.Fatalf("ranged fetch through a corrupting proxy: %v, want ErrCorrupt naming the chunk's CRC32C", err)
	}
}

func TestCorruptionAtRestIsQuarantined(t *testing.T) {
	dir := t.TempDir()
	cfg := storeConfig("disk", dir, nil)
	cfg.Gossip = nil
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	good, rotten := expertBlob(t, "F16", 2, 64, 64, 1), expertBlob(t, "F16", 2, 64, 64, 2)
	for _, b := range [][]byte{good, rotten} {
		if _, _, err := cl.Put(ctx, replicaOf(s), b); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// Flip one bit of one blob file at rest, then restart on the same data dir.
	path := filepath.Join(dir, "blobs", blob.Sum(rotten).String()+".blob")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Stats(); st.Blobs != 1 || st.Quarantined != 1 {
		t.Fatalf("after restart: %d blobs, %d quarantined; want 1 and 1", st.Blobs, st.Quarantined)
	}
	if _, err := os.Stat(filepath.Join(dir, "quarantine", blob.Sum(rotten).String()+".blob")); err != nil {
		t.Fatalf("rotten blob not in quarantine/: %v", err)
	}
	dst := make([]byte, len(good))
	if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(good), Size: int64(len(good))}, []routing.Replica{replicaOf(s)}, dst); err != nil || !slices.Equal(dst, good) {
		t.Fatalf("good blob after restart: %v", err)
	}
	err = cl.Fetch(ctx, client.Ref{Digest: blob.Sum(rotten), Size: int64(len(rotten))}, []routing.Replica{replicaOf(s)}, make([]byte, len(rotten)))
	if !errors.Is(err, storepb.ErrNotFound) {
		t.Fatalf("quarantined blob served: %v", err)
	}
}

func TestStoreKilledMidStream(t *testing.T) {
	c := newCluster(t, 2)
	cl := newClient(t, client.Config{AttemptTimeout: 10 * time.Second})
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 1024, 1024, 9) // 8 MiB
	for i := range 2 {
		if _, _, err := cl.Put(ctx, replicaOf(c.stores[i]), data); err != nil {
			t.Fatal(err)
		}
	}
	// A throttled path to store-0 keeps its stream going long enough to kill the store under it.
	p := newProxy(t, c.stores[0].DataAddr(), -1, 2*time.Millisecond)
	slow := replicaOf(c.stores[0])
	slow.DataAddr = p.addr()
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.stores[0].Stop()
	}()
	fctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	dst := make([]byte, len(data))
	start := time.Now()
	if err := cl.Fetch(fctx, client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}, []routing.Replica{slow, replicaOf(c.stores[1])}, dst); err != nil {
		t.Fatalf("fetch with a store killed mid-stream: %v", err)
	}
	if !slices.Equal(dst, data) {
		t.Fatal("bytes differ")
	}
	if st := cl.FetchStats(); st.Failovers != 1 {
		t.Fatalf("stats %+v: want one failover", st)
	}
	t.Logf("finished from the replica in %v", time.Since(start))
}

func TestRestartServesSameBlobs(t *testing.T) {
	dir := t.TempDir()
	cfg := storeConfig("restart", dir, nil)
	cfg.Gossip = nil
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	var blobs [][]byte
	for i := range 4 {
		b := expertBlob(t, "BF16", 2, 32, 48, uint64(i))
		blobs = append(blobs, b)
		if _, _, err := cl.Put(ctx, replicaOf(s), b); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := s.Stats(); st.Blobs != 4 || st.Quarantined != 0 {
		t.Fatalf("after restart: %+v", st)
	}
	for _, b := range blobs {
		dst := make([]byte, len(b))
		if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(b), Size: int64(len(b))}, []routing.Replica{replicaOf(s)}, dst); err != nil || !slices.Equal(dst, b) {
			t.Fatalf("after restart: %v", err)
		}
	}
}

func TestMembersSeeStoreLeave(t *testing.T) {
	c := newCluster(t, 3)
	waitFor(t, 5*time.Second, func() bool { return len(c.stores[0].Member().Alive(membership.RoleStore)) == 3 })
	for _, n := range c.stores[0].Member().Alive(membership.RoleStore) {
		if n.Meta.GRPCAddr == "" || n.Meta.DataAddr == "" || n.Meta.Capacity != 256<<20 {
			t.Fatalf("store meta %+v", n.Meta)
		}
	}
	c.stores[2].Close() // a graceful stop is a restart: stopped, not left
	waitFor(t, 5*time.Second, func() bool {
		for _, n := range c.stores[0].Member().Members() {
			if n.Name == "store-2" {
				return n.State == membership.StateStopped
			}
		}
		return false
	})
	if got := len(c.stores[1].Member().Alive(membership.RoleStore)); got != 2 {
		t.Fatalf("store-1 sees %d alive stores, want 2", got)
	}
}

func TestConcurrentFetchesCollapse(t *testing.T) {
	c := newCluster(t, 1)
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 512, 512, 5)
	if _, _, err := cl.Put(ctx, replicaOf(c.stores[0]), data); err != nil {
		t.Fatal(err)
	}
	before := c.stores[0].Stats().Fetches
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	bufs := make([][]byte, 8)
	for i := range 8 {
		bufs[i] = make([]byte, len(data))
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = cl.Fetch(ctx, ref, c.replicas(0), bufs[i])
		}()
	}
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil || !slices.Equal(bufs[i], data) {
			t.Fatalf("fetch %d: %v", i, errs[i])
		}
	}
	fetches := c.stores[0].Stats().Fetches - before
	if st := cl.FetchStats(); fetches+st.Collapsed != 8 || fetches >= 8 {
		t.Fatalf("%d store fetches, %d collapsed: want fewer than 8 transfers for 8 callers", fetches, st.Collapsed)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHedgeSlowReplica(t *testing.T) {
	c := newCluster(t, 2)
	// A 20% hedge budget, so that the one hedge the slow fetch below needs is never over budget.
	cl := newClient(t, client.Config{AttemptTimeout: 20 * time.Second, HedgeFraction: 0.2, HedgeMinDelay: time.Millisecond})
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 256, 256, 11) // 512 KiB
	for i := range 2 {
		if _, _, err := cl.Put(ctx, replicaOf(c.stores[i]), data); err != nil {
			t.Fatal(err)
		}
	}
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	dst := make([]byte, len(data))
	// Teach the client what a normal fetch takes, from the first store alone: a warm-up fetch that
	// hedged to the second (a loaded machine) and won would mark the first store slow, and the slow
	// fetch below would then go to the second store first, with no hedge to test.
	for range 40 {
		if err := cl.Fetch(ctx, ref, c.replicas(0), dst); err != nil {
			t.Fatal(err)
		}
	}
	// Now the first replica crawls (about 2 s for the blob); the hedge to the second must win.
	p := newProxy(t, c.stores[0].DataAddr(), -1, 60*time.Millisecond)
	slow := replicaOf(c.stores[0])
	slow.DataAddr = p.addr()
	clear(dst)
	before := cl.FetchStats()
	start := time.Now()
	if err := cl.Fetch(ctx, ref, []routing.Replica{slow, replicaOf(c.stores[1])}, dst); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if !slices.Equal(dst, data) {
		t.Fatal("hedged fetch returned different bytes")
	}
	st := cl.FetchStats()
	if st.Hedges-before.Hedges != 1 || st.HedgeWins-before.HedgeWins != 1 || st.Failovers != before.Failovers {
		t.Fatalf("stats %+v (before the slow fetch %+v): want one more hedge that won, no failover", st, before)
	}
	if took > time.Second {
		t.Fatalf("hedged fetch took %v: the slow replica was waited for", took)
	}
}

// bf16Blob builds an expert blob of bf16 weights drawn like real ones (N(0, 0.02)): compressible.
func bf16Blob(t *testing.T, rows, cols int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	mk := func(name string, r, c int) blob.Tensor {
		data := make([]byte, 2*r*c)
		for i := range r * c {
			bits := math.Float32bits(float32(rng.NormFloat64() * 0.02))
			data[2*i], data[2*i+1] = byte(bits>>16), byte(bits>>24)
		}
		return blob.Tensor{Name: name, DType: "BF16", Shape: []int{r, c}, Data: data}
	}
	b, err := blob.Build(blob.Header{Kind: blob.KindExpert, Model: "m", Block: 0, Expert: int(seed)},
		[]blob.Tensor{mk("wi", rows, cols), mk("wo", cols, rows)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCompressedFetch(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	weights := bf16Blob(t, 512, 1024, 1) // 2 MiB
	noise := expertBlob(t, "U8", 1, 1024, 1024, 2)
	put := newClient(t, client.DefaultConfig())
	for _, b := range [][]byte{weights, noise} {
		if _, _, err := put.Put(ctx, replicaOf(c.stores[0]), b); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name           string
		mode           client.Compression
		give           []byte
		wantCompressed bool
	}{
		{"always, compressible", client.CompressAlways, weights, true},
		{"always, incompressible: the store sends raw", client.CompressAlways, noise, false},
		{"never", client.CompressNever, weights, false},
	}
	for _, tt := range tests {
		tr := client.NewDataTransport(client.DataTransportConfig{Compression: tt.mode})
		cl := newClient(t, client.Config{Transport: tr})
		dst := make([]byte, len(tt.give))
		if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(tt.give), Size: int64(len(tt.give))}, c.replicas(0), dst); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(dst, tt.give) {
			t.Fatalf("%s: bytes differ", tt.name)
		}
		st := tr.Stats()
		if got := st.CompressedFetches == 1; got != tt.wantCompressed {
			t.Fatalf("%s: stats %+v, want compressed %v", tt.name, st, tt.wantCompressed)
		}
		if tt.wantCompressed && float64(st.WireBytes) > 0.8*float64(len(tt.give)) {
			t.Fatalf("%s: %d bytes on the wire for %d", tt.name, st.WireBytes, len(tt.give))
		}
	}
	if st := c.stores[0].Stats(); st.CompressedBytes <= 0 || st.CompressedBytes > int64(len(weights)) {
		t.Fatalf("store holds %d compressed bytes", st.CompressedBytes)
	}
}

func TestAutoCompressionOnSlowLink(t *testing.T) {
	c := newCluster(t, 1)
	ctx := context.Background()
	weights := bf16Blob(t, 512, 1024, 3) // 2 MiB
	put := newClient(t, client.DefaultConfig())
	if _, _, err := put.Put(ctx, replicaOf(c.stores[0]), weights); err != nil {
		t.Fatal(err)
	}
	// A link of about 100 MB/s (16 KiB reads, 150 µs apart): decoding is far faster, so auto mode
	// switches to compressed fetches once it has measured the link.
	p := newProxy(t, c.stores[0].DataAddr(), -1, 150*time.Microsecond)
	slow := replicaOf(c.stores[0])
	slow.DataAddr = p.addr()
	tr := client.NewDataTransport(client.DataTransportConfig{})
	cl := newClient(t, client.Config{Transport: tr, HedgeFraction: 0})
	dst := make([]byte, len(weights))
	for range 3 {
		clear(dst)
		if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(weights), Size: int64(len(weights))}, []routing.Replica{slow}, dst); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(dst, weights) {
			t.Fatal("bytes differ")
		}
	}
	st := tr.Stats()
	if st.CompressedFetches != 2 || st.LinkBytesPerSec <= 0 || st.DecodeBytesPerSec <= st.LinkBytesPerSec {
		t.Fatalf("stats %+v: want the first fetch raw (to measure the link), then compressed", st)
	}
}

func TestCopyStoreToStore(t *testing.T) {
	c := newCluster(t, 3)
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	data := expertBlob(t, "BF16", 2, 256, 256, 21)
	d := blob.Sum(data)
	if _, _, err := cl.Put(ctx, replicaOf(c.stores[0]), data); err != nil {
		t.Fatal(err)
	}
	ref := client.Ref{Digest: d, Size: int64(len(data))}
	// The first source does not have it: the copy fails over to the second.
	existed, err := cl.Copy(ctx, replicaOf(c.stores[1]), ref, c.replicas(2, 0))
	if err != nil || existed {
		t.Fatalf("Copy = %v, %v", existed, err)
	}
	dst := make([]byte, len(data))
	if err := cl.Fetch(ctx, client.Ref{Digest: d, Size: int64(len(data))}, c.replicas(1), dst); err != nil || !slices.Equal(dst, data) {
		t.Fatalf("fetch from the new replica: %v", err)
	}
	if again, err := cl.Copy(ctx, replicaOf(c.stores[1]), ref, c.replicas(0)); err != nil || !again {
		t.Fatalf("second Copy = %v, %v", again, err)
	}
	// Nobody has this one.
	_, err = cl.Copy(ctx, replicaOf(c.stores[2]), client.Ref{Digest: blob.Sum([]byte("x")), Size: 1}, c.replicas(0))
	if !errors.Is(err, storepb.ErrNotFound) {
		t.Fatalf("Copy of a blob no source has: %v, want ErrNotFound", err)
	}
	if st := c.stores[2].Stats(); st.UsedBytes != 0 {
		t.Fatalf("failed copy left %d bytes reserved", st.UsedBytes)
	}
}

func TestFollowerOutlivesCanceledLeader(t *testing.T) {
	c := newCluster(t, 1)
	cl := newClient(t, client.DefaultConfig())
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 512, 512, 31)
	if _, _, err := cl.Put(ctx, replicaOf(c.stores[0]), data); err != nil {
		t.Fatal(err)
	}
	// A slow path so the leader is still fetching when it is cancelled.
	p := newProxy(t, c.stores[0].DataAddr(), -1, 5*time.Millisecond)
	slow := replicaOf(c.stores[0])
	slow.DataAddr = p.addr()
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	lctx, cancel := context.WithCancel(ctx)
	leaderErr := make(chan error, 1)
	go func() { leaderErr <- cl.Fetch(lctx, ref, []routing.Replica{slow}, make([]byte, len(data))) }()
	time.Sleep(50 * time.Millisecond) // let the leader start
	followerErr := make(chan error, 1)
	dst := make([]byte, len(data))
	go func() { followerErr <- cl.Fetch(ctx, ref, c.replicas(0), dst) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v, want canceled", err)
	}
	if err := <-followerErr; err != nil || !slices.Equal(dst, data) {
		t.Fatalf("follower: %v", err)
	}
	if st := cl.FetchStats(); st.Collapsed != 1 {
		t.Fatalf("stats %+v: the follower did not join the leader's flight", st)
	}
}

// TestSlowReplicaTriedLast: once a store has been seen slow, the client tries its other replicas
// first, so fetches that list it first stop waiting for it (hedging alone is capped).
func TestSlowReplicaTriedLast(t *testing.T) {
	c := newCluster(t, 2)
	cl := newClient(t, client.Config{AttemptTimeout: 20 * time.Second, HedgeFraction: 0.05, HedgeMinDelay: time.Millisecond})
	ctx := context.Background()
	data := expertBlob(t, "F32", 4, 256, 256, 12) // 512 KiB
	for i := range 2 {
		if _, _, err := cl.Put(ctx, replicaOf(c.stores[i]), data); err != nil {
			t.Fatal(err)
		}
	}
	ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
	dst := make([]byte, len(data))
	fast := replicaOf(c.stores[1])
	for range 5 { // the fast store's speed is known
		if err := cl.Fetch(ctx, ref, []routing.Replica{fast}, dst); err != nil {
			t.Fatal(err)
		}
	}
	p := newProxy(t, c.stores[0].DataAddr(), -1, 10*time.Millisecond) // ~0.3 s for the blob
	slow := replicaOf(c.stores[0])
	slow.DataAddr = p.addr()
	var took []time.Duration
	for range 20 {
		start := time.Now()
		if err := cl.Fetch(ctx, ref, []routing.Replica{slow, fast}, dst); err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	if !slices.Equal(dst, data) {
		t.Fatal("fetched bytes differ")
	}
	// The first fetch learns the slow store (by waiting for it, or by a hedge that beat it); the
	// others go to the fast one first.
	var later time.Duration
	for _, d := range took[1:] {
		later = max(later, d)
	}
	t.Logf("first fetch %v, slowest of the next 19 %v", took[0], later)
	if later > 150*time.Millisecond {
		t.Errorf("a fetch after the slow store was seen took %v: it was tried first again", later)
	}
}
