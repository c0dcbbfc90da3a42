package dataplane

import (
	"bytes"
	"errors"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	req := Request{Op: OpFetch, Flags: FlagCompressed, Digest: [16]byte{1, 2, 3}, Offset: 7, Length: 1 << 20, ChunkSize: MinChunk}
	b := req.Append(nil)
	if len(b) != RequestSize {
		t.Fatalf("request frame is %d bytes, want %d", len(b), RequestSize)
	}
	got, err := ReadRequest(bytes.NewReader(b), make([]byte, RequestSize))
	if err != nil || got != req {
		t.Fatalf("ReadRequest = %+v, %v; want %+v", got, err, req)
	}
	resp := Response{Status: StatusNotFound, Encoding: EncodingPlanes, Total: 99, Wire: 42, Msg: "no such blob"}
	r, err := ReadResponse(bytes.NewReader(resp.Append(nil)), make([]byte, ResponseSize))
	if err != nil || r != resp {
		t.Fatalf("ReadResponse = %+v, %v", r, err)
	}
	ch := ChunkHeader{Offset: 1 << 40, Length: 12345, CRC: 0xdeadbeef}
	c, err := ReadChunkHeader(bytes.NewReader(ch.Append(nil)), make([]byte, ChunkHeaderSize))
	if err != nil || c != ch {
		t.Fatalf("ReadChunkHeader = %+v, %v", c, err)
	}
}

func TestBadRequests(t *testing.T) {
	good := Request{Op: OpFetch, Length: 1}.Append(nil)
	tests := []struct {
		name string
		give func([]byte)
	}{
		{"bad magic", func(b []byte) { b[0] = 'X' }},
		{"unknown op", func(b []byte) { b[4] = 9 }},
		{"negative offset", func(b []byte) { b[31] = 0x80 }},
		{"chunk too small", func(b []byte) { b[40] = 1 }},
	}
	for _, tt := range tests {
		b := bytes.Clone(good)
		tt.give(b)
		if _, err := ReadRequest(bytes.NewReader(b), make([]byte, RequestSize)); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: error %v, want ErrProtocol", tt.name, err)
		}
	}
	if _, err := ReadRequest(bytes.NewReader(good[:10]), make([]byte, RequestSize)); err == nil {
		t.Error("truncated request accepted")
	}
	huge := Response{Status: StatusOK}.Append(nil)
	huge[7] = 0x7f // message length far over the bound
	if _, err := ReadResponse(bytes.NewReader(huge), make([]byte, ResponseSize)); !errors.Is(err, ErrProtocol) {
		t.Errorf("oversized response message: %v", err)
	}
}
