// Package dataplane is the framing of the store's bulk-transfer connection: a plain TCP stream
// beside the gRPC control plane, so a blob moves with one kernel copy per side and no protobuf
// marshalling (gRPC with protobuf bytes reaches 0.4x of raw TCP on loopback here, the data plane
// ~0.9x or better; see docs/BENCHMARKS.md). It is the TCP implementation of the client's transport
// seam; an RDMA transport can replace it without touching the callers.
//
// A connection carries requests one after another (clients pool connections):
//
//	request  = magic "PGF1" | op u8 | flags u8 | pad [2]u8 | digest [16]u8 | offset u64 | length u64 | chunk u32 | pad u32   (48 bytes, little endian)
//	response = status u8 | encoding u8 | pad [2]u8 | msgLen u32 | total u64 | wire u64 | msg [msgLen]u8                    (24 bytes + msg)
//	then, for OpFetch with status OK, chunks covering [offset, offset+length) in order — or, when the
//	response's encoding is not raw, the whole blob's compressed frame [0, wire) (see blob.Compress):
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
	StatusDenied    byte = 6 // the peer's certificate may not read from this store
)

// Request flags.
const (
	// FlagCompressed asks for the blob's compressed frame when the store has one that pays (whole
	// blobs only); the response's Encoding says what came.
	FlagCompressed byte = 1
)

// Encodings of a response's bytes.
const (
	EncodingRaw    byte = 0
	EncodingPlanes byte = 1 // blob.Compress frame: byte planes + huff0/zstd
)

const (
	// RequestSize is the size of a request frame.
	RequestSize = 48
	// ResponseSize is the size of a response header, before its message.
	ResponseSize = 24
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
	Flags     byte
	Digest    [16]byte
	Offset    int64
	Length    int64
	ChunkSize int
}

// Append encodes r.
func (r Request) Append(b []byte) []byte {
	b = append(b, magic[:]...)
	b = append(b, r.Op, r.Flags, 0, 0)
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
	r := Request{Op: buf[4], Flags: buf[5]}
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
	Status   byte
	Encoding byte  // of the bytes that follow
	Total    int64 // blob size
	Wire     int64 // bytes that follow: the range's length, or the compressed frame's
	Msg      string
}

// Append encodes r.
func (r Response) Append(b []byte) []byte {
	msg := r.Msg
	if len(msg) > maxMsg {
		msg = msg[:maxMsg]
	}
	b = append(b, r.Status, r.Encoding, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(msg)))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Total))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Wire))
	return append(b, msg...)
}

// ReadResponse reads a response header and its message.
func ReadResponse(rd io.Reader, buf []byte) (Response, error) {
	buf = buf[:ResponseSize]
	if _, err := io.ReadFull(rd, buf); err != nil {
		return Response{}, err
	}
	r := Response{Status: buf[0], Encoding: buf[1], Total: int64(binary.LittleEndian.Uint64(buf[8:])),
		Wire: int64(binary.LittleEndian.Uint64(buf[16:]))}
	n := binary.LittleEndian.Uint32(buf[4:])
	if n > maxMsg || r.Total < 0 || r.Wire < 0 || r.Encoding > EncodingPlanes {
		return r, fmt.Errorf("%w: response message of %d bytes, total %d, wire %d, encoding %d", ErrProtocol, n, r.Total, r.Wire, r.Encoding)
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
