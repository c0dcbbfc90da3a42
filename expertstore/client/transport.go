package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/dataplane"
)

// Transport moves a blob's bytes from one replica into the caller's buffer: bytes [off,
// off+len(dst)) of blob d, each chunk's CRC32C verified before it counts. With whole, the range must
// be the entire blob (off 0, len(dst) its size) and the transport also checks the blob's digest,
// hashing each chunk as it lands (while it is in cache: a fraction of the cost of hashing after). It is the seam between
// the fetch logic (failover, hedging, singleflight) and the wire: TCP now (DataTransport, or
// GRPCTransport over the control plane), RDMA later, without touching the callers.
type Transport interface {
	Fetch(ctx context.Context, r Replica, d blob.Digest, off int64, dst []byte, whole bool) error
	Close() error
}

// DataTransport fetches over the stores' data plane (package dataplane), keeping a few idle
// connections per store.
type DataTransport struct {
	chunkSize int
	maxIdle   int
	dialer    net.Dialer

	mu     sync.Mutex
	idle   map[string][]*dataConn
	closed bool
}

type dataConn struct {
	c   net.Conn
	rd  *bufio.Reader
	buf []byte
}

// NewDataTransport returns a data-plane transport asking for chunkSize chunks (0: the store's).
func NewDataTransport(chunkSize, maxIdlePerStore int) *DataTransport {
	return &DataTransport{chunkSize: chunkSize, maxIdle: max(1, maxIdlePerStore), idle: map[string][]*dataConn{}}
}

func (t *DataTransport) get(ctx context.Context, addr string) (*dataConn, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, storepb.ErrClosed
	}
	if n := len(t.idle[addr]); n > 0 {
		c := t.idle[addr][n-1]
		t.idle[addr] = t.idle[addr][:n-1]
		t.mu.Unlock()
		return c, nil
	}
	t.mu.Unlock()
	c, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &dataConn{c: c, rd: bufio.NewReaderSize(c, 64<<10), buf: make([]byte, 64)}, nil
}

func (t *DataTransport) put(addr string, c *dataConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.idle[addr]) >= t.maxIdle {
		c.c.Close()
		return
	}
	t.idle[addr] = append(t.idle[addr], c)
}

// Fetch implements Transport.
func (t *DataTransport) Fetch(ctx context.Context, r Replica, d blob.Digest, off int64, dst []byte, whole bool) (err error) {
	if len(dst) == 0 {
		return nil
	}
	if r.DataAddr == "" {
		return fmt.Errorf("%w: replica %s has no data-plane address", storepb.ErrBadRequest, r.Name)
	}
	c, err := t.get(ctx, r.DataAddr)
	if err != nil {
		return fmt.Errorf("expertstore/client: dial %s (%s): %w", r.Name, r.DataAddr, err)
	}
	// Deadlines and cancellation cut the connection; a broken or abandoned one is never reused.
	if dl, ok := ctx.Deadline(); ok {
		c.c.SetDeadline(dl)
	} else {
		c.c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		cut := !stop()
		if err != nil || cut {
			c.c.Close()
			if ctx.Err() != nil {
				err = fmt.Errorf("expertstore/client: fetch %s from %s: %w", d, r.Name, context.Cause(ctx))
			}
			return
		}
		t.put(r.DataAddr, c)
	}()
	return fetchData(c, r, d, off, dst, whole, t.chunkSize)
}

// verifyPiece is how much of a chunk is read before it is checksummed (see fetchData).
const verifyPiece = 256 << 10

func fetchData(c *dataConn, r Replica, d blob.Digest, off int64, dst []byte, whole bool, chunkSize int) error {
	req := dataplane.Request{Op: dataplane.OpFetch, Digest: d, Offset: off, Length: int64(len(dst)), ChunkSize: chunkSize}
	if _, err := c.c.Write(req.Append(c.buf[:0])); err != nil {
		return err
	}
	resp, err := dataplane.ReadResponse(c.rd, c.buf)
	if err != nil {
		return err
	}
	if err := statusError(resp, r); err != nil {
		return err
	}
	end := off + int64(len(dst))
	var sum *blob.Hasher
	if whole {
		if err := wholeBlob(resp.Total, off, dst, d, r); err != nil {
			return err
		}
		sum = blob.NewHasher()
	}
	for pos := off; pos < end; {
		h, err := dataplane.ReadChunkHeader(c.rd, c.buf)
		if err != nil {
			return err
		}
		if h.Offset != pos || h.Length <= 0 || pos+int64(h.Length) > end {
			return fmt.Errorf("%w: %s sent chunk [%d, +%d), expected offset %d of [%d, %d)", dataplane.ErrProtocol, r.Name, h.Offset, h.Length, pos, off, end)
		}
		// Read the chunk in pieces small enough to stay in the L2 cache, and checksum (and hash)
		// each piece right after the kernel wrote it, instead of reading the chunk back from memory.
		p := dst[pos-off : pos-off+int64(h.Length)]
		var crc uint32
		for len(p) > 0 {
			piece := p[:min(len(p), verifyPiece)]
			if _, err := io.ReadFull(c.rd, piece); err != nil {
				return err
			}
			crc = blob.UpdateCRC32C(crc, piece)
			if sum != nil {
				sum.Write(piece)
			}
			p = p[len(piece):]
		}
		if crc != h.CRC {
			return fmt.Errorf("%w: chunk at offset %d of %s from %s fails its CRC32C", storepb.ErrCorrupt, pos, d, r.Name)
		}
		pos += int64(h.Length)
	}
	return checkDigest(sum, d, r)
}

// wholeBlob checks that [off, off+len(dst)) is the entire blob of total bytes.
func wholeBlob(total, off int64, dst []byte, d blob.Digest, r Replica) error {
	if off != 0 || total != int64(len(dst)) {
		return fmt.Errorf("%w: %s on %s is %d bytes, asked for [%d, +%d) as the whole blob", storepb.ErrBadRequest, d, r.Name, total, off, len(dst))
	}
	return nil
}

// checkDigest compares a whole blob's digest with the one asked for (nil: a partial range).
func checkDigest(sum *blob.Hasher, d blob.Digest, r Replica) error {
	if sum == nil {
		return nil
	}
	if got := sum.Digest(); got != d {
		return fmt.Errorf("%w: blob from %s has digest %s, want %s", storepb.ErrCorrupt, r.Name, got, d)
	}
	return nil
}

// statusError maps a data-plane status to the store's error sentinels.
func statusError(resp dataplane.Response, r Replica) error {
	var sentinel error
	switch resp.Status {
	case dataplane.StatusOK:
		return nil
	case dataplane.StatusNotFound:
		sentinel = storepb.ErrNotFound
	case dataplane.StatusBadRange:
		sentinel = storepb.ErrBadRange
	case dataplane.StatusExhausted:
		sentinel = storepb.ErrOverloaded
	case dataplane.StatusBadReq:
		sentinel = storepb.ErrBadRequest
	default:
		sentinel = errors.New("expertstore: internal error")
	}
	return fmt.Errorf("%w: %s: %s", sentinel, r.Name, resp.Msg)
}

// Close closes the idle connections; later fetches fail.
func (t *DataTransport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, cs := range t.idle {
		for _, c := range cs {
			c.c.Close()
		}
	}
	t.idle = nil
	return nil
}

// GRPCTransport fetches over the gRPC API (server-streamed chunks): the fallback when a store's
// data plane cannot be reached.
type GRPCTransport struct {
	conns     *Conns
	chunkSize int
}

// NewGRPCTransport fetches through conns, which it owns: Close closes them.
func NewGRPCTransport(conns *Conns, chunkSize int) *GRPCTransport {
	return &GRPCTransport{conns: conns, chunkSize: chunkSize}
}

// Fetch implements Transport.
func (t *GRPCTransport) Fetch(ctx context.Context, r Replica, d blob.Digest, off int64, dst []byte, whole bool) error {
	if len(dst) == 0 {
		return nil
	}
	api, err := t.conns.Store(r)
	if err != nil {
		return err
	}
	stream, err := api.Fetch(ctx, &storepb.FetchRequest{Digest: d.String(), Offset: off, Length: int64(len(dst)), ChunkSize: int32(t.chunkSize)})
	if err != nil {
		return storepb.FromStatus(err)
	}
	pos, end := off, off+int64(len(dst))
	var sum *blob.Hasher
	for pos < end {
		c, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: %s ended the stream at %d of [%d, %d)", dataplane.ErrProtocol, r.Name, pos, off, end)
			}
			return storepb.FromStatus(err)
		}
		if c.Offset != pos || pos+int64(len(c.Data)) > end || len(c.Data) == 0 {
			return fmt.Errorf("%w: %s sent chunk [%d, +%d), expected offset %d", dataplane.ErrProtocol, r.Name, c.Offset, len(c.Data), pos)
		}
		if blob.CRC32C(c.Data) != c.Crc32C {
			return fmt.Errorf("%w: chunk at offset %d of %s from %s fails its CRC32C", storepb.ErrCorrupt, pos, d, r.Name)
		}
		if whole && pos == off {
			if err := wholeBlob(c.Total, off, dst, d, r); err != nil {
				return err
			}
			sum = blob.NewHasher()
		}
		if sum != nil {
			sum.Write(c.Data)
		}
		pos += int64(copy(dst[pos-off:], c.Data))
	}
	return checkDigest(sum, d, r)
}

// Close closes the transport's connections.
func (t *GRPCTransport) Close() error { return t.conns.Close() }
