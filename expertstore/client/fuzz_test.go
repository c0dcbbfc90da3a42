package client

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/routing"
)

// writerConn is a net.Conn whose reads come from a byte string (a store's answer) and whose
// writes vanish (the request).
type writerConn struct {
	net.Conn
	r *bytes.Reader
}

func (c writerConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c writerConn) Write(p []byte) (int, error) { return len(p), nil }

// FuzzFetchData feeds the client's data-plane reader whatever a store (or anything posing as
// one) might send back for a whole-blob fetch: it never panics, and it returns nil only with the
// requested blob's exact bytes in the buffer.
func FuzzFetchData(f *testing.F) {
	want := make([]byte, 3000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	d := blob.Sum(want)
	good := dataplane.Response{Status: dataplane.StatusOK, Total: int64(len(want)), Wire: int64(len(want))}.Append(nil)
	for off := 0; off < len(want); off += 1024 {
		end := min(off+1024, len(want))
		good = dataplane.ChunkHeader{Offset: int64(off), Length: end - off, CRC: blob.CRC32C(want[off:end])}.Append(good)
		good = append(good, want[off:end]...)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	f.Add(bad)
	f.Add(dataplane.Response{Status: dataplane.StatusNotFound, Msg: "no such blob"}.Append(nil))
	f.Add(dataplane.Response{Status: dataplane.StatusOK, Encoding: dataplane.EncodingPlanes, Total: 3000, Wire: 100}.Append(nil))
	r := routing.Replica{Store: "fuzz"}
	f.Fuzz(func(t *testing.T, answer []byte) {
		c := writerConn{r: bytes.NewReader(answer)}
		dc := &dataConn{c: c, rd: bufio.NewReaderSize(c, dataplane.ChunkHeaderSize), buf: make([]byte, 64)}
		dst := make([]byte, len(want))
		req := dataplane.Request{Op: dataplane.OpFetch, Digest: d, Length: int64(len(want)), Flags: dataplane.FlagCompressed}
		var m fetchMeasure
		if err := fetchData(dc, r, req, dst, &m); err == nil && !bytes.Equal(dst, want) {
			t.Fatal("fetchData returned nil with bytes that are not the blob")
		}
	})
}
