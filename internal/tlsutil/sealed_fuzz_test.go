package tlsutil

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// readerConn is a net.Conn that reads from r and writes to w.
type readerConn struct {
	net.Conn
	r io.Reader
	w io.Writer
}

func (c readerConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readerConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// FuzzSealedRead feeds arbitrary bytes to a sealed connection's reader: it returns only bytes that
// were sealed under its key (here: none, or the seeds' frames), and errors otherwise — no panic,
// no allocation beyond one frame.
func FuzzSealedRead(f *testing.F) {
	keys := bytes.Repeat([]byte{7}, 64)
	var frames bytes.Buffer
	w, err := sealedWithKeys(keys, readerConn{w: &frames}, false)
	if err != nil {
		f.Fatal(err)
	}
	w.Write([]byte("a frame"))
	w.Write(bytes.Repeat([]byte{1}, 70000))
	f.Add(frames.Bytes())
	f.Add([]byte{0, 0, 0, 16})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := sealedWithKeys(keys, readerConn{r: bytes.NewReader(in)}, true)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				if !errors.Is(err, ErrSealed) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
		}
		if got.Len() > 0 && !bytes.HasPrefix(append([]byte("a frame"), bytes.Repeat([]byte{1}, 70000)...), got.Bytes()) {
			t.Fatalf("read %d bytes that were never sealed", got.Len())
		}
	})
}
