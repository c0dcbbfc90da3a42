package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// Transport moves a blob's bytes from one replica into the caller's buffer: bytes [off,
// off+len(dst)) of blob d, each chunk's CRC32C verified before it counts. With whole, the range must
// be the entire blob (off 0, len(dst) its size) and the transport also checks the blob's digest,
// hashing each chunk as it lands (while it is in cache: a fraction of the cost of hashing after). It is the seam between
// the fetch logic (failover, hedging, singleflight) and the wire: TCP now (DataTransport, or
// GRPCTransport over the control plane), RDMA later, without touching the callers.
type Transport interface {
	Fetch(ctx context.Context, r routing.Replica, d blob.Digest, off int64, dst []byte, whole bool) error
	Close() error
}

// Compression says when a DataTransport asks stores for compressed blobs.
type Compression int

const (
	// CompressAuto compresses when it makes a fetch faster on this link: when sending ratio×size
	// bytes and decoding size bytes takes less time than sending size bytes, by the link speed this
	// transport measures on its own fetches and the decode speed it measures on its own decodes.
	CompressAuto Compression = iota
	// CompressNever always fetches raw bytes.
	CompressNever
	// CompressAlways asks for the compressed form whenever the store has one that pays.
	CompressAlways
)

// DataTransportConfig configures a DataTransport.
type DataTransportConfig struct {
	ChunkSize       int // asked of the stores; 0: theirs
	MaxIdlePerStore int // idle connections kept per store (default 4)
	Compression     Compression
	// TLS, when set, wraps every connection in this node's mutual TLS.
	TLS *tlsutil.Reloader
}

// DataTransport fetches over the stores' data plane (package dataplane), keeping a few idle
// connections per store.
type DataTransport struct {
	cfg    DataTransportConfig
	dialer net.Dialer

	mu     sync.Mutex
	idle   map[string][]*dataConn
	closed bool

	link, decode rate // bytes per second, measured
	ratio        rate // compressed / raw, last seen
	calibrate    sync.Once

	compressedFetches, wireBytes, rawBytes atomic.Int64
}

// DataTransportStats counts a DataTransport's work.
type DataTransportStats struct {
	CompressedFetches int64   // fetches that came compressed
	WireBytes         int64   // bytes received for whole-blob fetches
	RawBytes          int64   // their decoded size
	LinkBytesPerSec   float64 // measured link speed (0: not yet)
	DecodeBytesPerSec float64 // measured decode speed (0: not yet)
}

// Stats reports the transport's counters and measurements.
func (t *DataTransport) Stats() DataTransportStats {
	return DataTransportStats{CompressedFetches: t.compressedFetches.Load(), WireBytes: t.wireBytes.Load(),
		RawBytes: t.rawBytes.Load(), LinkBytesPerSec: t.link.get(), DecodeBytesPerSec: t.decode.get()}
}

// rate is an exponentially weighted moving average, safe for concurrent use.
type rate struct {
	mu sync.Mutex
	v  float64
}

func (r *rate) get() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.v
}

func (r *rate) observe(x float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.v == 0 {
		r.v = x
	} else {
		r.v = 0.8*r.v + 0.2*x
	}
}

// wantCompressed decides whether to ask for a compressed blob of size bytes.
func (t *DataTransport) wantCompressed(size int) bool {
	switch t.cfg.Compression {
	case CompressNever:
		return false
	case CompressAlways:
		return true
	}
	if size < 1<<20 {
		return false // small blobs: the decode's fixed costs dominate
	}
	link := t.link.get()
	if link == 0 {
		return false // learn the link on raw fetches first
	}
	t.calibrate.Do(t.calibrateDecode)
	decode, ratio := t.decode.get(), t.ratio.get()
	if decode == 0 || ratio == 0 {
		return false
	}
	// Compressed: ratio·size over the link, then size through the decoder; raw: size over the link.
	return ratio/link+1/decode < 1/link
}

// calibrateDecode measures the decoder once on 4 MiB of bf16 weights drawn like real ones, so the
// first decision has a decode speed to go by; real decodes refine it.
func (t *DataTransport) calibrateDecode() {
	const n = 2 << 20
	raw := make([]byte, 2*n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		bits := math.Float32bits(float32(rng.NormFloat64() * 0.02))
		raw[2*i], raw[2*i+1] = byte(bits>>16), byte(bits>>24)
	}
	frame, ok := blob.Compress(raw, 2, 0)
	if !ok {
		return
	}
	start := time.Now()
	if err := blob.Decompress(raw, frame); err != nil {
		return
	}
	t.decode.observe(float64(len(raw)) / time.Since(start).Seconds())
	t.ratio.observe(float64(len(frame)) / float64(len(raw)))
}

type dataConn struct {
	c   net.Conn
	rd  *bufio.Reader
	buf []byte
}

// NewDataTransport returns a data-plane transport.
func NewDataTransport(cfg DataTransportConfig) *DataTransport {
	if cfg.MaxIdlePerStore <= 0 {
		cfg.MaxIdlePerStore = 4
	}
	return &DataTransport{cfg: cfg, idle: map[string][]*dataConn{}}
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
	if t.cfg.TLS != nil {
		raw := tlsutil.NewBulkReader(c) // reads many records per system call
		tc := tls.Client(raw, t.cfg.TLS.DataDialConfig(addr))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS with %s: %w", addr, err)
		}
		c = tc
		// Sealed framing when the store offers it (tlsutil.Sealed): the bulk bytes leave TLS's
		// records for whole-chunk AES-GCM frames under keys from this handshake.
		if dl, ok := ctx.Deadline(); ok {
			tc.SetReadDeadline(dl) //nolint:errcheck // a closed conn fails the read
		}
		sealed, err := tlsutil.SealClient(tc, raw)
		if err != nil {
			tc.Close()
			return nil, fmt.Errorf("TLS with %s: %w", addr, err)
		}
		tc.SetReadDeadline(time.Time{}) //nolint:errcheck
		if sealed != nil {
			c = sealed
		}
	}
	// The reader buffers only a frame header's worth, so chunk data goes from the socket straight
	// into the caller's buffer (bufio reads directly when its buffer is empty and the read is
	// large) instead of partly through bufio's buffer, an extra copy.
	return &dataConn{c: c, rd: bufio.NewReaderSize(c, dataplane.ChunkHeaderSize), buf: make([]byte, 64)}, nil
}

func (t *DataTransport) put(addr string, c *dataConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.idle[addr]) >= t.cfg.MaxIdlePerStore {
		c.c.Close()
		return
	}
	t.idle[addr] = append(t.idle[addr], c)
}

// Fetch implements Transport.
func (t *DataTransport) Fetch(ctx context.Context, r routing.Replica, d blob.Digest, off int64, dst []byte, whole bool) (err error) {
	if len(dst) == 0 {
		return nil
	}
	if r.DataAddr == "" {
		return fmt.Errorf("%w: replica %s has no data-plane address", storepb.ErrBadRequest, r.Store)
	}
	c, err := t.get(ctx, r.DataAddr)
	if err != nil {
		return fmt.Errorf("expertstore/client: dial %s (%s): %w", r.Store, r.DataAddr, err)
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
				err = fmt.Errorf("expertstore/client: fetch %s from %s: %w", d, r.Store, context.Cause(ctx))
			}
			return
		}
		t.put(r.DataAddr, c)
	}()
	if !whole {
		return fetchData(c, r, dataplane.Request{Op: dataplane.OpFetch, Digest: d, Offset: off, Length: int64(len(dst)), ChunkSize: t.cfg.ChunkSize}, dst, nil)
	}
	req := dataplane.Request{Op: dataplane.OpFetch, Digest: d, Length: int64(len(dst)), ChunkSize: t.cfg.ChunkSize}
	if t.wantCompressed(len(dst)) {
		req.Flags |= dataplane.FlagCompressed
	}
	start := time.Now()
	var m fetchMeasure
	if err := fetchData(c, r, req, dst, &m); err != nil {
		return err
	}
	t.wireBytes.Add(m.wire)
	t.rawBytes.Add(int64(len(dst)))
	if m.compressed {
		t.compressedFetches.Add(1)
		t.decode.observe(float64(len(dst)) / m.decode.Seconds())
		t.ratio.observe(float64(m.wire) / float64(len(dst)))
	}
	if xfer := time.Since(start) - m.decode; m.wire >= 1<<20 && xfer > 0 {
		t.link.observe(float64(m.wire) / xfer.Seconds())
	}
	return nil
}

// fetchMeasure is what a whole-blob fetch reports for the compression decision.
type fetchMeasure struct {
	compressed bool
	wire       int64         // bytes received
	decode     time.Duration // spent decompressing
}

// verifyPiece is how much of a chunk is read before it is checksummed (see readChunks).
const verifyPiece = 128 << 10

// fetchData sends req and reads the answer into dst. With m set, req is for the whole blob: the
// blob's digest is checked, and it may come compressed (then decoded into dst).
func fetchData(c *dataConn, r routing.Replica, req dataplane.Request, dst []byte, m *fetchMeasure) error {
	d := blob.Digest(req.Digest)
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
	if m == nil {
		return readChunks(c, r, d, dst, req.Offset, nil)
	}
	if err := wholeBlob(resp.Total, req.Offset, dst, d, r); err != nil {
		return err
	}
	m.wire = resp.Wire
	if resp.Encoding == dataplane.EncodingRaw {
		sum := blob.NewHasher(dst)
		if err := readChunks(c, r, d, dst, 0, sum); err != nil {
			return err
		}
		return checkDigest(sum, d, r)
	}
	if req.Flags&dataplane.FlagCompressed == 0 || resp.Wire <= 0 || resp.Wire > int64(len(dst)) {
		return fmt.Errorf("%w: %s sent a %d-byte compressed frame for a %d-byte blob unasked", dataplane.ErrProtocol, r.Store, resp.Wire, len(dst))
	}
	frame := make([]byte, resp.Wire)
	if err := readChunks(c, r, d, frame, 0, nil); err != nil {
		return err
	}
	if n, err := blob.DecompressedSize(frame); err != nil || n != len(dst) {
		return fmt.Errorf("%w: compressed %s from %s decodes to %d bytes, want %d (%v)", storepb.ErrCorrupt, d, r.Store, n, len(dst), err)
	}
	start := time.Now()
	if err := blob.Decompress(dst, frame); err != nil {
		return fmt.Errorf("%w: compressed %s from %s: %v", storepb.ErrCorrupt, d, r.Store, err)
	}
	m.compressed, m.decode = true, time.Since(start)
	if got := blob.Sum(dst); got != d {
		return fmt.Errorf("%w: blob from %s has digest %s, want %s", storepb.ErrCorrupt, r.Store, got, d)
	}
	return nil
}

// readChunks reads the framed chunks covering [off, off+len(dst)) into dst, checking each chunk's
// CRC32C, or, with sum set (a whole blob, off 0), telling sum how far dst is filled instead: sum
// hashes the blob where it lands, its digest covers every byte before the caller may use any, and
// the chunk CRCs would check the same bytes a second time.
//
// Each chunk is read in 128 KiB pieces, each checked on this goroutine right after its read, while
// it is still in cache. Handing the pieces to a second goroutine instead overlapped the check with
// the next read, 2% faster on an idle 2-core loopback (0.90 against 0.88 of raw TCP, medians of
// 18 alternated runs) but at 1.53 times raw TCP's CPU per byte against 1.33 inline, and with a
// busy core 0.78 against 0.81 (docs/BENCHMARKS.md, issue 16 part 1): where the cores are the
// limit, as on slower machines or beside the worker's compute, CPU per byte is what counts.
func readChunks(c *dataConn, r routing.Replica, d blob.Digest, dst []byte, off int64, sum *blob.Hasher) error {
	end := off + int64(len(dst))
	for pos := off; pos < end; {
		h, err := dataplane.ReadChunkHeader(c.rd, c.buf)
		if err != nil {
			return err
		}
		if h.Offset != pos || h.Length <= 0 || pos+int64(h.Length) > end {
			return fmt.Errorf("%w: %s sent chunk [%d, +%d), expected offset %d of [%d, %d)", dataplane.ErrProtocol, r.Store, h.Offset, h.Length, pos, off, end)
		}
		var crc uint32
		for at, stop := pos-off, pos-off+int64(h.Length); at < stop; {
			// A read per piece, not one up to the chunk's end: each piece is checked while still in
			// cache (a read of up to 1 MiB measured 0.86 of raw TCP against 0.91 per piece).
			piece := dst[at:min(stop, at+verifyPiece)]
			if _, err := io.ReadFull(c.rd, piece); err != nil {
				return err
			}
			at += int64(len(piece))
			if sum != nil {
				sum.Filled(int(at)) // a whole blob: off is 0
			} else {
				crc = blob.UpdateCRC32C(crc, piece)
			}
		}
		if sum == nil && crc != h.CRC {
			return fmt.Errorf("%w: chunk at offset %d of %s from %s fails its CRC32C", storepb.ErrCorrupt, pos, d, r.Store)
		}
		pos += int64(h.Length)
	}
	return nil
}

// wholeBlob checks that [off, off+len(dst)) is the entire blob of total bytes.
func wholeBlob(total, off int64, dst []byte, d blob.Digest, r routing.Replica) error {
	if off != 0 || total != int64(len(dst)) {
		return fmt.Errorf("%w: %s on %s is %d bytes, asked for [%d, +%d) as the whole blob", storepb.ErrBadRequest, d, r.Store, total, off, len(dst))
	}
	return nil
}

// checkDigest compares a whole blob's digest with the one asked for (nil: a partial range).
func checkDigest(sum *blob.Hasher, d blob.Digest, r routing.Replica) error {
	if sum == nil {
		return nil
	}
	if got := sum.Digest(); got != d {
		return fmt.Errorf("%w: blob from %s has digest %s, want %s", storepb.ErrCorrupt, r.Store, got, d)
	}
	return nil
}

// statusError maps a data-plane status to the store's error sentinels.
func statusError(resp dataplane.Response, r routing.Replica) error {
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
	case dataplane.StatusDenied:
		sentinel = storepb.ErrDenied
	default:
		sentinel = errors.New("expertstore: internal error")
	}
	return fmt.Errorf("%w: %s: %s", sentinel, r.Store, resp.Msg)
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
func (t *GRPCTransport) Fetch(ctx context.Context, r routing.Replica, d blob.Digest, off int64, dst []byte, whole bool) error {
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
				err = fmt.Errorf("%w: %s ended the stream at %d of [%d, %d)", dataplane.ErrProtocol, r.Store, pos, off, end)
			}
			return storepb.FromStatus(err)
		}
		if c.Offset != pos || pos+int64(len(c.Data)) > end || len(c.Data) == 0 {
			return fmt.Errorf("%w: %s sent chunk [%d, +%d), expected offset %d", dataplane.ErrProtocol, r.Store, c.Offset, len(c.Data), pos)
		}
		if blob.CRC32C(c.Data) != c.Crc32C {
			return fmt.Errorf("%w: chunk at offset %d of %s from %s fails its CRC32C", storepb.ErrCorrupt, pos, d, r.Store)
		}
		if whole && pos == off {
			if err := wholeBlob(c.Total, off, dst, d, r); err != nil {
				return err
			}
			sum = blob.NewHasher(dst)
		}
		pos += int64(copy(dst[pos-off:], c.Data))
		if sum != nil {
			sum.Filled(int(pos)) // a whole blob: off is 0
		}
	}
	return checkDigest(sum, d, r)
}

// Close closes the transport's connections.
func (t *GRPCTransport) Close() error { return t.conns.Close() }
