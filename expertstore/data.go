package expertstore

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/internal/tlsutil"
)

// serveData accepts data-plane connections until the listener closes: on shutdown it returns nil,
// otherwise the error that stopped it (the store has failed).
func (s *Server) serveData(context.Context) error {
	for {
		c, err := s.dataLis.Accept()
		if err != nil {
			select {
			case <-s.closing:
				return nil
			default:
				return fmt.Errorf("data plane: %w", err)
			}
		}
		if !s.dataConns.admit(c) {
			s.refusedConns.Add(1)
			c.Close() // over the cap: the client tries another replica
			continue
		}
		if !s.trackConn(c, true) {
			s.dataConns.release(c)
			c.Close()
			return nil
		}
		s.g.Go("data plane connection", func(context.Context) error {
			defer s.dataConns.release(c)
			defer s.trackConn(c, false)
			defer c.Close()
			err := s.serveDataConn(c) // it returns only when the connection ends
			s.log.Debug("data plane connection ended", "remote", c.RemoteAddr(), "err", err)
			return nil // one connection's end is not the store's
		})
	}
}

// corker is a connection that can coalesce an answer's writes (tlsutil.Bulk, tlsutil.Sealed).
type corker interface {
	Cork()
	Flush() error
}

// serveDataConn answers the requests of one connection, one after another (after its TLS
// handshake, with TLS: a peer without a certificate of the cluster's CA gets nothing).
func (s *Server) serveDataConn(c net.Conn) error {
	var (
		bulk   corker
		denied error
	)
	if s.cfg.TLS != nil {
		raw := tlsutil.NewBulkWriter(c)
		tc := tls.Server(raw, s.cfg.TLS.DataServerConfig())
		tc.SetDeadline(time.Now().Add(s.cfg.WriteTimeout)) //nolint:errcheck // a closed conn fails the handshake
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		// Clients that offer it get sealed framing (tlsutil.Sealed); others TLS records.
		sealed, err := tlsutil.SealServer(tc, c)
		if err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		tc.SetDeadline(time.Time{}) //nolint:errcheck
		c, bulk = tc, raw
		if sealed != nil {
			c, bulk = sealed, sealed
		}
		// A peer whose role may not read gets its first request answered StatusDenied, then
		// the connection ends (answering after the request, not before, so that the close does
		// not reset the connection under the answer).
		_, denied = policy.AllowConn(tc.ConnectionState(), dataFetch)
	}
	rd := bufio.NewReaderSize(c, 4<<10)
	reqBuf := make([]byte, dataplane.RequestSize)
	hdr := make([]byte, 0, 64)
	for {
		// A connection that sends no request for IdleTimeout is closed (clients redial).
		c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout)) //nolint:errcheck // a closed conn fails the read below
		req, err := dataplane.ReadRequest(rd, reqBuf)
		if err != nil {
			if errors.Is(err, dataplane.ErrProtocol) {
				c.Write(dataplane.Response{Status: dataplane.StatusBadReq, Msg: err.Error()}.Append(hdr[:0]))
			}
			return err
		}
		if denied != nil {
			s.deniedConns.Add(1)
			c.Write(dataplane.Response{Status: dataplane.StatusDenied, Msg: denied.Error()}.Append(hdr[:0])) //nolint:errcheck // closing anyway
			return denied
		}
		start := time.Now()
		s.inflightReqs.Add(1)
		if bulk != nil {
			bulk.Cork() // the answer's records leave in large writes, the last with Flush
		}
		err = s.serveDataRequest(c, req, hdr)
		if bulk != nil {
			if ferr := bulk.Flush(); err == nil {
				err = ferr
			}
		}
		s.inflightReqs.Add(-1)
		s.metrics.observeData(opName(req.Op), start, err)
		if err != nil {
			return err
		}
	}
}

func (s *Server) serveDataRequest(c net.Conn, req dataplane.Request, hdr []byte) error {
	fail := func(status byte, err error) error {
		_, werr := c.Write(dataplane.Response{Status: status, Msg: err.Error()}.Append(hdr[:0]))
		return werr
	}
	e, err := s.get(blob.Digest(req.Digest))
	if err != nil {
		return fail(dataplane.StatusNotFound, err)
	}
	total := int64(len(e.data))
	length, err := blobRange(total, req.Offset, req.Length)
	if err != nil {
		return fail(dataplane.StatusBadRange, err)
	}
	if err := s.acquire(length); err != nil {
		return fail(dataplane.StatusExhausted, err)
	}
	defer s.release(length)
	s.fetches.Add(1)
	chunk := int64(req.ChunkSize)
	if chunk == 0 {
		chunk = int64(s.cfg.ChunkSize)
	}
	// The whole blob, compressed, when the client asks for it and it pays.
	if req.Flags&dataplane.FlagCompressed != 0 && req.Op == dataplane.OpFetch && req.Offset == 0 && length == total {
		if frame, crcs := s.compressed(e); frame != nil {
			resp := dataplane.Response{Status: dataplane.StatusOK, Encoding: dataplane.EncodingPlanes, Total: total, Wire: int64(len(frame))}
			err := s.sendChunks(c, resp.Append(hdr[:0]), frame, crcs, 0, int64(len(frame)), chunk)
			s.fetched.Add(length)
			return err
		}
	}
	resp := dataplane.Response{Status: dataplane.StatusOK, Total: total, Wire: length}.Append(hdr[:0])
	if req.Op == dataplane.OpRaw {
		// One write for the whole range: its deadline allows WriteTimeout per 4 MiB.
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout * time.Duration(1+length/(4<<20)))) //nolint:errcheck
		bufs := net.Buffers{resp, e.data[req.Offset : req.Offset+length]}
		_, err := bufs.WriteTo(c)
		s.fetched.Add(length)
		return err
	}
	err = s.sendChunks(c, resp, e.data, e.crcs, req.Offset, req.Offset+length, chunk)
	s.fetched.Add(length)
	return err
}

// sendChunks writes resp and then payload[off:end] in framed chunks, one writev per chunk straight
// from RAM; crcs are the payload's CRC32C per store chunk, used when a chunk is one of them.
func (s *Server) sendChunks(c net.Conn, resp, payload []byte, crcs []uint32, off, end, chunk int64) error {
	if off == end {
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)) //nolint:errcheck // a closed conn fails the write
		_, err := c.Write(resp)
		return err
	}
	var ch [dataplane.ChunkHeaderSize]byte
	for pos := off; pos < end; pos += chunk {
		stop := min(pos+chunk, end)
		h := dataplane.ChunkHeader{Offset: pos, Length: int(stop - pos), CRC: s.chunkCRC(payload, crcs, pos, stop)}.Append(ch[:0])
		bufs := net.Buffers{h, payload[pos:stop]}
		if pos == off {
			bufs = net.Buffers{resp, h, payload[pos:stop]}
		}
		// A peer that stops reading is cut after WriteTimeout for one chunk: it would otherwise
		// hold this goroutine and the request's in-flight bytes as long as it likes.
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)) //nolint:errcheck // a closed conn fails the write
		if _, err := bufs.WriteTo(c); err != nil {
			return err
		}
	}
	return nil
}

// opName labels a data-plane op in metrics.
func opName(op byte) string {
	if op == dataplane.OpRaw {
		return "raw"
	}
	return "fetch"
}
