package dataplane

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReadRequest reads what any client might send a store: a valid request or an error (a
// protocol error, or the reader's own when the bytes run out), never a panic; a valid one encodes
// to bytes that read back the same (reserved bytes aside).
func FuzzReadRequest(f *testing.F) {
	f.Add(Request{Op: OpFetch, Digest: [16]byte{1, 2, 3}, Offset: 7, Length: 1 << 20, ChunkSize: MinChunk}.Append(nil))
	f.Add(Request{Op: OpRaw, Length: 1}.Append(nil))
	f.Add(Request{Op: OpFetch, Flags: FlagCompressed}.Append(nil))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		buf := make([]byte, RequestSize)
		r, err := ReadRequest(bytes.NewReader(b), buf)
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if r.Offset < 0 || r.Length < 0 || (r.ChunkSize != 0 && (r.ChunkSize < MinChunk || r.ChunkSize > MaxChunk)) {
			t.Fatalf("accepted %+v", r)
		}
		again, err := ReadRequest(bytes.NewReader(r.Append(nil)), buf)
		if err != nil || again != r {
			t.Fatalf("%+v encodes to bytes read back as %+v (%v)", r, again, err)
		}
	})
}

// FuzzReadResponse reads what any store might answer: a response or an error, never a panic,
// and never a message longer than the limit.
func FuzzReadResponse(f *testing.F) {
	f.Add(Response{Status: StatusOK, Total: 10, Wire: 10}.Append(nil))
	f.Add(Response{Status: StatusNotFound, Msg: "gone"}.Append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadResponse(bytes.NewReader(b), make([]byte, ResponseSize))
		if err == nil && (len(r.Msg) > maxMsg || r.Total < 0 || r.Wire < 0) {
			t.Fatalf("accepted %+v", r)
		}
	})
}
