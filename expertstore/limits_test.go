package expertstore_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/routing"
)

// limitedStore is a store with small budgets and short timeouts, for the exhaustion attacks.
func limitedStore(t *testing.T, adjust func(*expertstore.Config)) *expertstore.Server {
	t.Helper()
	cfg := storeConfig("store-x", t.TempDir(), nil)
	cfg.Gossip = nil
	cfg.MemoryLimit, cfg.MaxBlobBytes, cfg.MaxInflightBytes = 64<<20, 64<<20, 64<<20
	cfg.PutIdleTimeout, cfg.IdleTimeout, cfg.WriteTimeout = 500*time.Millisecond, time.Second, 300*time.Millisecond
	if adjust != nil {
		adjust(&cfg)
	}
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestHeaderOnlyPutsHoldNothing is the attack that used to take a store down: Put streams that
// send a header declaring almost the whole memory limit, then nothing. They reserve nothing (bytes
// are reserved as they arrive), so a real Put and fetches go on; and each is ended once idle.
func TestHeaderOnlyPutsHoldNothing(t *testing.T) {
	s := limitedStore(t, nil)
	conns := client.NewConns()
	defer conns.Close()
	raw, err := conns.Store(replicaOf(s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var streams []storepb.ExpertStore_PutClient
	for i := range 3 {
		st, err := raw.Put(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fake := blob.Sum([]byte{byte(i)})
		if err := st.Send(&storepb.PutRequest{Msg: &storepb.PutRequest_Header{Header: &storepb.PutHeader{Digest: fake.String(), Size: 60 << 20}}}); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	time.Sleep(100 * time.Millisecond) // the headers have arrived
	cl := newClient(t, client.DefaultConfig())
	data := expertBlob(t, "F32", 4, 512, 512, 3) // 2 MiB
	if _, _, err := cl.Put(ctx, replicaOf(s), data); err != nil {
		t.Fatalf("a real Put beside three header-only ones: %v", err)
	}
	dst := make([]byte, len(data))
	if err := cl.Fetch(ctx, client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}, []routing.Replica{replicaOf(s)}, dst); err != nil {
		t.Fatalf("a fetch beside them: %v", err)
	}
	if st := s.Stats(); st.UsedBytes != int64(len(data)) || st.InflightBytes != 0 {
		t.Errorf("stats %+v: the header-only Puts hold bytes", st)
	}
	began := time.Now()
	for i, st := range streams {
		err := st.RecvMsg(new(storepb.PutResponse)) // waits for the store's answer without ending the stream
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "idle") {
			t.Errorf("header-only Put %d: %v, want DeadlineExceeded naming the idle stream", i, err)
		}
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("the idle Puts were ended after %v", took)
	}
}

// TestSlowReaderIsCut asks the data plane for a blob and reads none of it: the store gives up
// after its write timeout, closes the connection and releases the request's in-flight bytes.
func TestSlowReaderIsCut(t *testing.T) {
	s := limitedStore(t, nil)
	cl := newClient(t, client.DefaultConfig())
	data := expertBlob(t, "F32", 4, 2048, 2048, 4) // 16 MiB: more than the socket buffers hold
	if _, _, err := cl.Put(context.Background(), replicaOf(s), data); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.DataAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := blob.Sum(data)
	if _, err := c.Write(dataplane.Request{Op: dataplane.OpFetch, Digest: d, Length: int64(len(data))}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().InflightBytes == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Stats().InflightBytes == 0 {
		t.Fatal("the fetch never took in-flight bytes")
	}
	for s.Stats().InflightBytes != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a peer that reads nothing still holds %d in-flight bytes", s.Stats().InflightBytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The store closed its end: draining the socket ends in EOF or a reset, short of the blob.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := io.Copy(io.Discard, c)
	if n >= int64(len(data)) {
		t.Errorf("the slow reader got all %d bytes", n)
	}
}

// TestConnectionCaps opens idle data-plane connections up to the per-peer cap: the next one is
// closed at once and counted; the idle ones are closed after the idle timeout, and a fetch works
// again.
func TestConnectionCaps(t *testing.T) {
	s := limitedStore(t, func(c *expertstore.Config) { c.MaxConnsPerPeer = 4 })
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", s.DataAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(50 * time.Millisecond) // accepted and counted
	extra, err := net.Dial("tcp", s.DataAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a connection over the per-peer cap was kept open (%v)", err)
	}
	// The idle ones are closed by the store after IdleTimeout (1 s).
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("idle connection %d still open after the idle timeout (%v)", i, err)
		}
	}
	cl := newClient(t, client.DefaultConfig())
	data := expertBlob(t, "F32", 4, 64, 64, 5)
	if _, _, err := cl.Put(context.Background(), replicaOf(s), data); err != nil {
		t.Fatal(err)
	}
	if err := cl.Fetch(context.Background(), client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}, []routing.Replica{replicaOf(s)}, make([]byte, len(data))); err != nil {
		t.Errorf("a fetch once the idle connections are gone: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
