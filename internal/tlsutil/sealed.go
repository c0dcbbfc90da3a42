package tlsutil

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Sealed framing: the data plane's bulk bytes under keys from the TLS handshake.
//
// crypto/tls seals 16 KiB records, each with a copy in and a copy out, which held the data plane
// to 0.35 of raw TCP on a machine whose AES-GCM seals 6.6 GB/s per core. A data-plane connection
// that negotiates SealedProto (ALPN) runs the usual TLS 1.3 handshake — mutual authentication, the
// roles checked as always — and then leaves the TLS record layer for frames of its own:
//
//	frame = length (4 bytes, big-endian: the sealed bytes that follow) ‖ AES-256-GCM(plaintext) ‖ tag
//
// The keys are exported from the handshake (RFC 8446 §7.5, ExportKeyingMaterial with the label
// below), one per direction; the nonce is a per-direction frame counter, so a frame cannot be
// replayed, reordered, dropped or moved to the other direction without failing to open; the
// length is authenticated as additional data. Frames are as large as one Write (a whole chunk),
// sealed straight from the caller's bytes into the send buffer, and opened straight into the
// reader's buffer when it has room: one pass over the bytes per side besides the socket's copy.
//
// The switch-over: the server disables session tickets (TLS 1.3 would send them after its
// Finished), and after its handshake it sends one byte over TLS; the client reads it before
// writing anything, so neither side can have read the other's first frame into TLS's buffers.

// SealedProto is the ALPN protocol of a data-plane connection with sealed framing.
const SealedProto = "pregate-sealed/1"

const (
	sealedLabel = "EXPORTER-pregate-data-plane-v1"
	// maxSealedFrame bounds a frame's sealed length: a 4 MiB chunk, its header and the tag.
	maxSealedFrame = 4<<20 + 64<<10 + 16
	sealedReadBuf  = 64 << 10 // buffers frame headers and small frames
	sealedWriteBuf = 256 << 10
)

// ErrSealed is returned (wrapped) for a frame that does not open: corrupt, forged or replayed.
var ErrSealed = errors.New("tlsutil: sealed frame")

// DataServerConfig is ServerConfig for a store's data plane: it offers sealed framing and sends no
// session tickets.
func (r *Reloader) DataServerConfig() *tls.Config {
	c := r.serverConfig(tls.RequireAndVerifyClientCert)
	get := c.GetConfigForClient
	c.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		cfg, err := get(hi)
		if err == nil {
			cfg.NextProtos, cfg.SessionTicketsDisabled = []string{SealedProto}, true
		}
		return cfg, err
	}
	return c
}

// DataDialConfig is DialConfigAs(addr, RoleStore) offering sealed framing.
func (r *Reloader) DataDialConfig(addr string) *tls.Config {
	c := r.DialConfigAs(addr, RoleStore)
	c.NextProtos = []string{SealedProto}
	return c
}

// Sealed is a connection carrying sealed frames after its TLS handshake. Reads and writes go to
// the connection under the TLS one (deadlines and Close too). While corked, writes are sealed into
// one buffer and leave in large system calls (Flush).
type Sealed struct {
	net.Conn
	rd         *bufio.Reader
	open, seal cipher.AEAD
	rseq, wseq uint64
	pending    []byte // opened bytes not yet read
	scratch    []byte // frames that do not fit the reader's buffer are opened here

	mu     sync.Mutex
	out    []byte // sealed frames not yet written (while corked)
	corked bool
}

// SealServer switches a server's connection to sealed framing after tc's handshake, when the
// client negotiated SealedProto (nil, nil otherwise: stay on TLS). raw is the connection under tc.
func SealServer(tc *tls.Conn, raw net.Conn) (*Sealed, error) {
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != SealedProto {
		return nil, nil
	}
	s, err := newSealed(cs, raw, false)
	if err != nil {
		return nil, err
	}
	if _, err := tc.Write([]byte{1}); err != nil { // the client may write frames from now on
		return nil, err
	}
	return s, nil
}

// SealClient is SealServer's client side: it waits for the server's switch-over byte. raw is the
// connection under tc (a reader that buffers is fine: nothing follows the byte until we write).
func SealClient(tc *tls.Conn, raw net.Conn) (*Sealed, error) {
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != SealedProto {
		return nil, nil
	}
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		return nil, fmt.Errorf("tlsutil: sealed framing: the server's switch-over: %w", err)
	}
	return newSealed(cs, raw, true)
}

func newSealed(cs tls.ConnectionState, raw net.Conn, client bool) (*Sealed, error) {
	keys, err := cs.ExportKeyingMaterial(sealedLabel, nil, 64)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: sealed framing: %w", err)
	}
	return sealedWithKeys(keys, raw, client)
}

// sealedWithKeys is a Sealed over raw with keys (client-to-server key, then server-to-client).
func sealedWithKeys(keys []byte, raw net.Conn, client bool) (*Sealed, error) {
	c2s, err := gcm(keys[:32])
	if err != nil {
		return nil, err
	}
	s2c, err := gcm(keys[32:])
	if err != nil {
		return nil, err
	}
	s := &Sealed{Conn: raw, rd: bufio.NewReaderSize(raw, sealedReadBuf), open: c2s, seal: s2c}
	if client {
		s.open, s.seal = s2c, c2s
	}
	return s, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func nonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// Write seals p as one frame (frames of at most 4 MiB).
func (s *Sealed) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	written := 0
	for len(p) > 0 {
		n := min(len(p), maxSealedFrame-64<<10-16)
		s.appendFrame(p[:n])
		p, written = p[n:], written+n
		if !s.corked || len(s.out) >= sealedWriteBuf {
			if err := s.flushLocked(); err != nil {
				return written - n, err
			}
		}
	}
	return written, nil
}

func (s *Sealed) appendFrame(p []byte) {
	sealedLen := len(p) + s.seal.Overhead()
	start := len(s.out)
	s.out = binary.BigEndian.AppendUint32(s.out, uint32(sealedLen))
	s.out = s.seal.Seal(s.out, nonce(s.wseq), p, s.out[start:start+4])
	s.wseq++
}

func (s *Sealed) flushLocked() error {
	if len(s.out) == 0 {
		return nil
	}
	_, err := s.Conn.Write(s.out)
	s.out = s.out[:0]
	return err
}

// Cork starts coalescing frames; Flush writes them and stops.
func (s *Sealed) Cork() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corked = true
}

// Flush writes the frames coalesced since Cork and stops coalescing. A large send buffer is let go.
func (s *Sealed) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corked = false
	err := s.flushLocked()
	if cap(s.out) > sealedWriteBuf+maxSealedFrame {
		s.out = nil
	}
	return err
}

// Read opens frames: straight into p when it can hold the frame's plaintext (the socket's bytes
// land in a buffer and are opened from there into p: one pass, as opening in place would be), else
// into the buffer, from which later reads copy.
func (s *Sealed) Read(p []byte) (int, error) {
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	var hdr [4]byte
	if _, err := io.ReadFull(s.rd, hdr[:]); err != nil {
		return 0, err
	}
	size := int(binary.BigEndian.Uint32(hdr[:]))
	if size < s.open.Overhead() || size > maxSealedFrame {
		return 0, fmt.Errorf("%w: length %d", ErrSealed, size)
	}
	if cap(s.scratch) < size {
		s.scratch = make([]byte, size)
	}
	sealed := s.scratch[:size]
	if _, err := io.ReadFull(s.rd, sealed); err != nil {
		return 0, unexpected(err)
	}
	dst := sealed[:0] // in place, then copied out
	if len(p) >= size-s.open.Overhead() {
		dst = p[:0]
	}
	plain, err := s.open.Open(dst, nonce(s.rseq), sealed, hdr[:])
	if err != nil {
		return 0, fmt.Errorf("%w %d does not open: %w", ErrSealed, s.rseq, err)
	}
	s.rseq++
	if len(plain) > 0 && &plain[0] == &p[0] {
		return len(plain), nil
	}
	n := copy(p, plain)
	s.pending = plain[n:]
	return n, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
