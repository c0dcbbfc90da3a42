// Package dataplane is the framing of the store's bulk-transfer connection: a plain TCP stream
// beside the gRPC control plane, so a blob moves with one kernel copy per side and no protobuf
// marshalling (gRPC with protobuf bytes reaches 0.4x of raw TCP on loopback here, the data plane
// ~0.9x or better; see docs/BENCHMARKS.md). It is the TCP implementation of the client's transport
// seam; an RDMA transport can replace it without touching the callers.
//
// A connection carries requests one after another (clients pool connections):
//
//	request  = magic "PGF1" | op u8 | pad [3]u8 | digest [16]u8 | offset u64 | length u64 | chunk u32 | pad u32   (48 bytes, little endian)
//	response = status u8 | pad [3]u8 | msgLen u32 | total u64 | msg [msgLen]u8                                      (16 bytes + msg)
//	then, for OpFetch with status OK, chunks covering [offset, offset+length) in order:
//	chunk    = offset u64 | length u32 | crc32c u32 | data [length]u8
//	and for OpRaw (the benchmark's plain-TCP baseline) the bytes alone, unframed and unchecked.
package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Ops.
const (
	OpFetch byte = 1 // framed chunks with CRC32C
	OpRaw   byte = 2 // raw bytes: the plain TCP copy the benchmark compares against
)

// Statuses.
const (
	StatusOK        byte = 0
	StatusNotFound  byte = 1
	StatusBadRange  byte = 2
	StatusExhausted byte = 3
	StatusInternal  byte = 4
	StatusBadReq    byte = 5
)

const (
	// RequestSize is the size of a request frame.
	RequestSize = 48
	// ResponseSize is the size of a response header, before its message.
	ResponseSize = 16
	// ChunkHeaderSize precedes each chunk's data.
	ChunkHeaderSize = 16
	// MinChunk and MaxChunk bound the chunk size a request may ask for.
	MinChunk = 64 << 10
	MaxChunk = 4 << 20
	// maxMsg bounds an error message.
	maxMsg = 4 << 10
)

var magic = [4]byte{'P', 'G', 'F', '1'}

// ErrProtocol reports a malformed frame.
var ErrProtocol = errors.New("dataplane: protocol error")

// Request asks for bytes [Offset, Offset+Length) of a blob; Length 0 means to the end.
type Request struct {
	Op        byte
	Digest    [16]byte
	Offset    int64
	Length    int64
	ChunkSize int
}

// Append encodes r.
func (r Request) Append(b []byte) []byte {
	b = append(b, magic[:]...)
	b = append(b, r.Op, 0, 0, 0)
	b = append(b, r.Digest[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Offset))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Length))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.ChunkSize))
	return binary.LittleEndian.AppendUint32(b, 0)
}

// ReadRequest reads and checks one request.
func ReadRequest(rd io.Reader, buf []byte) (Request, error) {
	buf = buf[:RequestSize]
	if _, err := io.ReadFull(rd, buf); err != nil {
		return Request{}, err
	}
	if [4]byte(buf[:4]) != magic {
		return Request{}, fmt.Errorf("%w: bad magic %q", ErrProtocol, buf[:4])
	}
	r := Request{Op: buf[4]}
	copy(r.Digest[:], buf[8:24])
	r.Offset = int64(binary.LittleEndian.Uint64(buf[24:]))
	r.Length = int64(binary.LittleEndian.Uint64(buf[32:]))
	r.ChunkSize = int(binary.LittleEndian.Uint32(buf[40:]))
	switch {
	case r.Op != OpFetch && r.Op != OpRaw:
		return r, fmt.Errorf("%w: unknown op %d", ErrProtocol, r.Op)
	case r.Offset < 0 || r.Length < 0:
		return r, fmt.Errorf("%w: negative range %d+%d", ErrProtocol, r.Offset, r.Length)
	case r.ChunkSize != 0 && (r.ChunkSize < MinChunk || r.ChunkSize > MaxChunk):
		return r, fmt.Errorf("%w: chunk size %d outside [%d, %d]", ErrProtocol, r.ChunkSize, MinChunk, MaxChunk)
	}
	return r, nil
}

// Response heads the answer to a request.
type Response struct {
	Status byte
	Total  int64 // blob size
	Msg    string
}

// Append encodes r.
func (r Response) Append(b []byte) []byte {
	msg := r.Msg
	if len(msg) > maxMsg {
		msg = msg[:maxMsg]
	}
	b = append(b, r.Status, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(msg)))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Total))
	return append(b, msg...)
}

// ReadResponse reads a response header and its message.
func ReadResponse(rd io.Reader, buf []byte) (Response, error) {
	buf = buf[:ResponseSize]
	if _, err := io.ReadFull(rd, buf); err != nil {
		return Response{}, err
	}
	r := Response{Status: buf[0], Total: int64(binary.LittleEndian.Uint64(buf[8:]))}
	n := binary.LittleEndian.Uint32(buf[4:])
	if n > maxMsg || r.Total < 0 {
		return r, fmt.Errorf("%w: response message of %d bytes, total %d", ErrProtocol, n, r.Total)
	}
	if n > 0 {
		msg := make([]byte, n)
		if _, err := io.ReadFull(rd, msg); err != nil {
			return r, err
		}
		r.Msg = string(msg)
	}
	return r, nil
}

// ChunkHeader precedes each chunk.
type ChunkHeader struct {
	Offset int64
	Length int
	CRC    uint32
}

// Append encodes h.
func (h ChunkHeader) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(h.Offset))
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Length))
	return binary.LittleEndian.AppendUint32(b, h.CRC)
}

// ReadChunkHeader reads one chunk header.
func ReadChunkHeader(rd io.Reader, buf []byte) (ChunkHeader, error) {
	buf = buf[:ChunkHeaderSize]
	if _, err := io.ReadFull(rd, buf); err != nil {
		return ChunkHeader{}, err
	}
	return ChunkHeader{
		Offset: int64(binary.LittleEndian.Uint64(buf)),
		Length: int(binary.LittleEndian.Uint32(buf[8:])),
		CRC:    binary.LittleEndian.Uint32(buf[12:]),
	}, nil
}
