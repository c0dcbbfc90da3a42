package tlsutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// sealedPair is a store-side and a client-side connection on loopback after the data plane's
// handshake (sealed framing when the client offers it).
func sealedPair(t *testing.T, offer bool) (server, client net.Conn, rawClient net.Conn) {
	t.Helper()
	a, err := NewAuthority(t.TempDir(), "t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.Node(Identity{RoleStore, "store-0"}, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wk, err := a.Node(Identity{RoleWorker, "worker-0"}, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		tc := tls.Server(c, st.DataServerConfig())
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		s, err := SealServer(tc, c)
		if s == nil && err == nil {
			done <- result{c: tc}
			return
		}
		done <- result{c: s, err: err}
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cfg := wk.DataDialConfig(l.Addr().String())
	if !offer {
		cfg.NextProtos = nil
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	var cc net.Conn = tc
	if s, err := SealClient(tc, raw); err != nil {
		t.Fatal(err)
	} else if s != nil {
		cc = s
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close(); cc.Close() })
	return r.c, cc, raw
}

// TestSealedRoundTrip sends writes of many sizes both ways, corked and not, and reads them back
// through buffers of other sizes: every byte arrives, in order.
func TestSealedRoundTrip(t *testing.T) {
	server, client, _ := sealedPair(t, true)
	if _, ok := server.(*Sealed); !ok {
		t.Fatalf("the server is %T, want sealed framing", server)
	}
	if _, ok := client.(*Sealed); !ok {
		t.Fatalf("the client is %T, want sealed framing", client)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dir := range []struct {
		name     string
		from, to net.Conn
	}{{"server→client", server, client}, {"client→server", client, server}} {
		var want bytes.Buffer
		sizes := []int{1, 16, 24, 4096, 1 << 20, 5<<20 + 3, 17, 0, 300 << 10}
		go func() {
			w := dir.from.(*Sealed)
			for i, n := range sizes {
				b := make([]byte, n)
				for j := range b {
					b[j] = byte(i + j)
				}
				if i%2 == 1 {
					w.Cork()
				}
				w.Write(b)
				if i%2 == 1 {
					w.Flush()
				}
			}
		}()
		for i, n := range sizes {
			for j := range n {
				want.WriteByte(byte(i + j))
			}
		}
		got := make([]byte, 0, want.Len())
		for len(got) < want.Len() {
			buf := make([]byte, 1+rng.IntN(2<<20)) // reads smaller and larger than the frames
			n, err := dir.to.Read(buf)
			if err != nil {
				t.Fatalf("%s: read after %d bytes: %v", dir.name, len(got), err)
			}
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%s: the bytes read differ from those written", dir.name)
		}
	}
}

// TestSealedRefusesTampering: a flipped bit, a replayed frame and an oversized length are refused,
// never returned as data.
func TestSealedRefusesTampering(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mangle func(frames [][]byte) []byte
	}{
		{"flipped bit", func(f [][]byte) []byte { b := bytes.Clone(f[0]); b[10] ^= 1; return b }},
		{"replayed frame", func(f [][]byte) []byte { return append(bytes.Clone(f[0]), f[0]...) }},
		{"reordered frames", func(f [][]byte) []byte { return append(bytes.Clone(f[1]), f[0]...) }},
		{"huge length", func([][]byte) []byte { return []byte{0xff, 0xff, 0xff, 0xff} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server, client, _ := sealedPair(t, true)
			w := server.(*Sealed)
			// Seal two frames as the server would, and hand the client a mangled stream.
			w.Cork()
			w.Write([]byte("first frame's bytes"))
			first := bytes.Clone(w.out)
			w.out = w.out[:0]
			w.Write([]byte("second"))
			second := bytes.Clone(w.out)
			w.out = w.out[:0]
			w.Flush()
			srv := w.Conn
			srv.Write(tc.mangle([][]byte{first, second}))
			buf := make([]byte, 64)
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			var err error
			for err == nil {
				var n int
				n, err = client.Read(buf)
				if tc.name == "replayed frame" && err == nil && string(buf[:n]) != "first frame's bytes" {
					t.Fatalf("read %q", buf[:n])
				}
			}
			if !errors.Is(err, ErrSealed) {
				t.Fatalf("got %v, want ErrSealed", err)
			}
		})
	}
}

// TestSealedFallsBack: a client that does not offer sealed framing stays on TLS records.
func TestSealedFallsBack(t *testing.T) {
	server, client, _ := sealedPair(t, false)
	if _, ok := server.(*tls.Conn); !ok {
		t.Fatalf("the server is %T, want TLS", server)
	}
	go client.Write([]byte("hello"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(server, b); err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
}
