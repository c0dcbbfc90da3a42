package expertstore

import (
	"bufio"
	"errors"
	"net"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/dataplane"
)

// serveData accepts data-plane connections until the listener closes.
func (s *Server) serveData() {
	for {
		c, err := s.dataLis.Accept()
		if err != nil {
			return
		}
		if !s.trackConn(c, true) {
			c.Close()
			return
		}
		s.goFunc(func() {
			defer s.trackConn(c, false)
			defer c.Close()
			if err := s.serveDataConn(c); err != nil {
				s.log.Debug("data plane connection", "remote", c.RemoteAddr(), "err", err)
			}
		})
	}
}

// serveDataConn answers the requests of one connection, one after another.
func (s *Server) serveDataConn(c net.Conn) error {
	rd := bufio.NewReaderSize(c, 4<<10)
	reqBuf := make([]byte, dataplane.RequestSize)
	hdr := make([]byte, 0, 64)
	for {
		req, err := dataplane.ReadRequest(rd, reqBuf)
		if err != nil {
			if errors.Is(err, dataplane.ErrProtocol) {
				c.Write(dataplane.Response{Status: dataplane.StatusBadReq, Msg: err.Error()}.Append(hdr[:0]))
			}
			return err
		}
		if err := s.serveDataRequest(c, req, hdr); err != nil {
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
	resp := dataplane.Response{Status: dataplane.StatusOK, Total: total}.Append(hdr[:0])
	end := req.Offset + length
	if req.Op == dataplane.OpRaw {
		bufs := net.Buffers{resp, e.data[req.Offset:end]}
		_, err := bufs.WriteTo(c)
		s.fetched.Add(length)
		return err
	}
	chunk := int64(req.ChunkSize)
	if chunk == 0 {
		chunk = int64(s.cfg.ChunkSize)
	}
	// The response header goes out with the first chunk: one writev per chunk, the data written
	// straight from the blob in RAM.
	var ch [dataplane.ChunkHeaderSize]byte
	for off := req.Offset; off < end; off += chunk {
		stop := min(off+chunk, end)
		h := dataplane.ChunkHeader{Offset: off, Length: int(stop - off), CRC: s.chunkCRC(e, off, stop)}.Append(ch[:0])
		bufs := net.Buffers{h, e.data[off:stop]}
		if off == req.Offset {
			bufs = net.Buffers{resp, h, e.data[off:stop]}
		}
		if _, err := bufs.WriteTo(c); err != nil {
			return err
		}
		s.fetched.Add(stop - off)
	}
	if length == 0 {
		_, err := c.Write(resp)
		return err
	}
	return nil
}
