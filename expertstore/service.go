package expertstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
)

// service implements the gRPC API over a Server. Every error leaves through storepb.ToStatus, the
// one table from store errors to gRPC codes.
type service struct {
	storepb.UnimplementedExpertStoreServer
	s *Server
}

func parseDigest(s string) (blob.Digest, error) {
	d, err := blob.ParseDigest(s)
	if err != nil {
		return d, fmt.Errorf("%w: digest %q: %v", storepb.ErrBadRequest, s, err)
	}
	return d, nil
}

// Put receives a blob: header, then chunks in order, each CRC-checked; the whole blob must match
// its digest. Nothing is kept unless all of it checks out.
func (v *service) Put(stream storepb.ExpertStore_PutServer) error {
	v.s.inflightReqs.Add(1)
	defer v.s.inflightReqs.Add(-1)
	info, existed, err := v.put(stream)
	if err != nil {
		return storepb.ToStatus(err)
	}
	return stream.SendAndClose(&storepb.PutResponse{Blob: info, Existed: existed})
}

func (v *service) put(stream storepb.ExpertStore_PutServer) (*storepb.BlobInfo, bool, error) {
	s := v.s
	first, err := stream.Recv()
	if err != nil {
		return nil, false, err
	}
	h := first.GetHeader()
	if h == nil {
		return nil, false, fmt.Errorf("%w: Put must start with a header", storepb.ErrBadRequest)
	}
	d, err := parseDigest(h.Digest)
	if err != nil {
		return nil, false, err
	}
	switch {
	case h.Size <= 0:
		return nil, false, fmt.Errorf("%w: blob size %d", storepb.ErrBadRequest, h.Size)
	case h.Size > s.cfg.MaxBlobBytes:
		return nil, false, fmt.Errorf("%w: %d bytes, the store takes at most %d", storepb.ErrTooLarge, h.Size, s.cfg.MaxBlobBytes)
	}
	if e, err := s.get(d); err == nil {
		return e.info, true, nil
	}
	// Bytes are reserved (memory limit) and taken from the in-flight budget as they arrive, not
	// as the header declares them: a stream that sends a header and stalls holds nothing. And a
	// stream idle for PutIdleTimeout is ended.
	var (
		buf      = make([]byte, 0, min(h.Size, putInitialBuffer))
		n        int64
		reserved int64
	)
	defer func() { s.release(n) }()
	fail := func(err error) (*storepb.BlobInfo, bool, error) {
		s.unreserve(reserved)
		return nil, false, err
	}
	msgs := recvIdle(stream, s.cfg.PutIdleTimeout)
	defer msgs.stop()
	for {
		msg, err := msgs.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(err)
		}
		c := msg.GetChunk()
		switch {
		case c == nil:
			err = fmt.Errorf("%w: a second header in one Put", storepb.ErrBadRequest)
		case c.Offset != n:
			err = fmt.Errorf("%w: chunk at offset %d, expected %d", storepb.ErrBadRequest, c.Offset, n)
		case n+int64(len(c.Data)) > h.Size:
			err = fmt.Errorf("%w: chunk at %d of %d bytes overflows the declared size %d", storepb.ErrBadRequest, c.Offset, len(c.Data), h.Size)
		case blob.CRC32C(c.Data) != c.Crc32C:
			err = fmt.Errorf("%w: chunk at offset %d fails its CRC32C", storepb.ErrCorrupt, c.Offset)
		}
		if err != nil {
			return fail(err)
		}
		k := int64(len(c.Data))
		if err := s.acquire(k); err != nil {
			return fail(err)
		}
		if err := s.reserve(k); err != nil {
			s.release(k)
			return fail(err)
		}
		reserved += k
		buf = append(buf, c.Data...)
		n += k
	}
	if n != h.Size {
		return fail(fmt.Errorf("%w: stream ended after %d of %d bytes", storepb.ErrBadRequest, n, h.Size))
	}
	if cap(buf) > len(buf)+len(buf)/8 { // grown by doubling: keep only what the blob needs
		buf = append([]byte(nil), buf...)
	}
	if got := blob.Sum(buf); got != d {
		return fail(fmt.Errorf("%w: blob digest is %s, header says %s", storepb.ErrCorrupt, got, d))
	}
	s.mu.RLock()
	e, dup := s.blobs[d] // a concurrent Put of the same blob won
	s.mu.RUnlock()
	if dup {
		s.unreserve(reserved)
		return e.info, true, nil
	}
	e, err = s.add(d, buf)
	if err != nil {
		return fail(err)
	}
	s.log.Debug("put", "digest", d, "bytes", h.Size)
	return e.info, false, nil
}

// blobRange resolves a requested byte range against a blob of size total.
func blobRange(total, off, length int64) (int64, error) {
	if off < 0 || length < 0 || off > total || (length > 0 && off+length > total) {
		return 0, fmt.Errorf("%w: [%d, +%d) of a %d-byte blob", storepb.ErrBadRange, off, length, total)
	}
	if length == 0 {
		length = total - off
	}
	return length, nil
}

// Fetch streams a blob's bytes in chunks with their CRC32C.
func (v *service) Fetch(req *storepb.FetchRequest, stream storepb.ExpertStore_FetchServer) error {
	v.s.inflightReqs.Add(1)
	defer v.s.inflightReqs.Add(-1)
	return storepb.ToStatus(v.fetch(req, stream))
}

func (v *service) fetch(req *storepb.FetchRequest, stream storepb.ExpertStore_FetchServer) error {
	s := v.s
	d, err := parseDigest(req.Digest)
	if err != nil {
		return err
	}
	e, err := s.get(d)
	if err != nil {
		return err
	}
	total := int64(len(e.data))
	length, err := blobRange(total, req.Offset, req.Length)
	if err != nil {
		return err
	}
	chunk := int64(req.ChunkSize)
	if chunk == 0 {
		chunk = int64(s.cfg.ChunkSize)
	} else if chunk < 64<<10 || chunk > 4<<20 {
		return fmt.Errorf("%w: chunk size %d outside [64 KiB, 4 MiB]", storepb.ErrBadRequest, chunk)
	}
	if err := s.acquire(length); err != nil {
		return err
	}
	defer s.release(length)
	s.fetches.Add(1)
	for off := req.Offset; off < req.Offset+length; off += chunk {
		end := min(off+chunk, req.Offset+length)
		c := &storepb.Chunk{Offset: off, Data: e.data[off:end], Crc32C: s.chunkCRC(e.data, e.crcs, off, end)}
		if off == req.Offset {
			c.Total = total
		}
		if err := stream.Send(c); err != nil {
			return err
		}
		s.fetched.Add(end - off)
	}
	return nil
}

// chunkCRC is the CRC32C of payload[off:end], taken from crcs (one per store chunk) when the range
// is one of the store's own chunks.
func (s *Server) chunkCRC(payload []byte, crcs []uint32, off, end int64) uint32 {
	cs := int64(s.cfg.ChunkSize)
	if off%cs == 0 && (end-off == cs || end == int64(len(payload))) {
		return crcs[off/cs]
	}
	return blob.CRC32C(payload[off:end])
}

func (v *service) Has(_ context.Context, req *storepb.HasRequest) (*storepb.HasResponse, error) {
	out := &storepb.HasResponse{Present: make([]bool, len(req.Digests))}
	for i, h := range req.Digests {
		d, err := parseDigest(h)
		if err != nil {
			return nil, storepb.ToStatus(err)
		}
		_, err = v.s.get(d)
		out.Present[i] = err == nil
	}
	return out, nil
}

func (v *service) List(_ context.Context, req *storepb.ListRequest) (*storepb.ListResponse, error) {
	return &storepb.ListResponse{Blobs: v.s.list(req.Model)}, nil
}

func (v *service) Delete(_ context.Context, req *storepb.DeleteRequest) (*storepb.DeleteResponse, error) {
	d, err := parseDigest(req.Digest)
	if err != nil {
		return nil, storepb.ToStatus(err)
	}
	ok, err := v.s.remove(d)
	if err != nil {
		return nil, storepb.ToStatus(err)
	}
	return &storepb.DeleteResponse{Deleted: ok}, nil
}

func (v *service) Stats(context.Context, *storepb.StatsRequest) (*storepb.StatsResponse, error) {
	return v.s.Stats(), nil
}

// Copy fetches a blob from the given stores (failover and checks as any client fetch) and keeps it.
func (v *service) Copy(ctx context.Context, req *storepb.CopyRequest) (*storepb.PutResponse, error) {
	info, existed, err := v.s.copyFrom(ctx, req)
	if err != nil {
		return nil, storepb.ToStatus(err)
	}
	return &storepb.PutResponse{Blob: info, Existed: existed}, nil
}

func (s *Server) copyFrom(ctx context.Context, req *storepb.CopyRequest) (*storepb.BlobInfo, bool, error) {
	d, err := parseDigest(req.Digest)
	if err != nil {
		return nil, false, err
	}
	switch {
	case req.Size <= 0:
		return nil, false, fmt.Errorf("%w: blob size %d", storepb.ErrBadRequest, req.Size)
	case req.Size > s.cfg.MaxBlobBytes:
		return nil, false, fmt.Errorf("%w: %d bytes, the store takes at most %d", storepb.ErrTooLarge, req.Size, s.cfg.MaxBlobBytes)
	case len(req.Sources) == 0:
		return nil, false, fmt.Errorf("%w: copy of %s names no source", storepb.ErrBadRequest, d)
	}
	if e, err := s.get(d); err == nil {
		return e.info, true, nil
	}
	if err := s.acquire(req.Size); err != nil {
		return nil, false, err
	}
	defer s.release(req.Size)
	if err := s.reserve(req.Size); err != nil {
		return nil, false, err
	}
	buf := make([]byte, req.Size)
	if err := s.peers.Fetch(ctx, client.Ref{Digest: d, Size: req.Size}, client.Sources(req), buf); err != nil {
		s.unreserve(req.Size)
		return nil, false, err
	}
	s.mu.RLock()
	e, dup := s.blobs[d]
	s.mu.RUnlock()
	if dup {
		s.unreserve(req.Size)
		return e.info, true, nil
	}
	e, err = s.add(d, buf)
	if err != nil {
		s.unreserve(req.Size)
		return nil, false, err
	}
	s.log.Info("copied", "digest", d, "bytes", req.Size)
	return e.info, false, nil
}
