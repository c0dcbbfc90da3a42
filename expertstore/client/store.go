package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// The store API, typed. Every call leaves through storepb.FromStatus, the one table between store
// errors and gRPC codes, so errors.Is(err, storepb.ErrNotFound) (and the other sentinels) holds for
// what a remote store returned. Nothing outside this package calls the generated stubs.

// BlobInfo is what a store says of a blob it holds.
type BlobInfo struct {
	Digest blob.Digest
	Size   int64
	Kind   string // "expert" | "dense", from the blob's header ("" when it has none)
	Model  string
	// Block and Expert name an expert blob's expert (-1 for a dense blob).
	Block, Expert int
}

func blobInfo(b *storepb.BlobInfo) (BlobInfo, error) {
	d, err := blob.ParseDigest(b.GetDigest())
	if err != nil {
		return BlobInfo{}, fmt.Errorf("%w: a store described a blob with digest %q: %v", storepb.ErrBadRequest, b.GetDigest(), err)
	}
	return BlobInfo{Digest: d, Size: b.GetSize(), Kind: b.GetKind(), Model: b.GetModel(), Block: int(b.GetBlock()), Expert: int(b.GetExpert())}, nil
}

// StoreStats are a store's counters.
type StoreStats struct {
	Node string
	// Identity is what the store's certificate says it is (zero over plaintext).
	Identity              tlsutil.Identity
	Blobs                 int64
	UsedBytes             int64
	CapacityBytes         int64
	Quarantined           int64 // blobs that failed verification at start (kept aside, never served)
	InflightBytes         int64
	Fetches, FetchedBytes int64
	Rejected              int64 // requests answered RESOURCE_EXHAUSTED
	CompressedBytes       int64
	DataAddr              string
	Epoch                 uint64 // the store's incarnation
}

func (c *Client) api(r routing.Replica) (storeAPI, error) {
	if r.GRPCAddr == "" {
		return storeAPI{}, fmt.Errorf("%w: store %q has no gRPC address", storepb.ErrBadRequest, r.Store)
	}
	a, err := c.conns.Store(r)
	return storeAPI{a, r}, err
}

type storeAPI struct {
	storepb.ExpertStoreClient
	r routing.Replica
}

// wrap maps a call's error through the table and names the store.
func (a storeAPI) wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("expertstore/client: %s on %s: %w", call, a.r.Store, storepb.FromStatus(err))
}

// Stats returns store r's counters.
func (c *Client) Stats(ctx context.Context, r routing.Replica) (StoreStats, error) {
	a, err := c.api(r)
	if err != nil {
		return StoreStats{}, err
	}
	var p peer.Peer
	st, err := a.ExpertStoreClient.Stats(ctx, &storepb.StatsRequest{}, grpc.Peer(&p))
	if err != nil {
		return StoreStats{}, a.wrap("stats", err)
	}
	var id tlsutil.Identity
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		id, _ = tlsutil.PeerIdentity(info.State)
	}
	return StoreStats{Node: st.Node, Identity: id, Blobs: st.Blobs, UsedBytes: st.UsedBytes, CapacityBytes: st.CapacityBytes,
		Quarantined: st.Quarantined, InflightBytes: st.InflightBytes, Fetches: st.Fetches, FetchedBytes: st.FetchedBytes,
		Rejected: st.Rejected, CompressedBytes: st.CompressedBytes, DataAddr: st.DataAddr, Epoch: st.Epoch}, nil
}

// Has reports, for each digest, whether store r holds it.
func (c *Client) Has(ctx context.Context, r routing.Replica, digests ...blob.Digest) ([]bool, error) {
	a, err := c.api(r)
	if err != nil {
		return nil, err
	}
	req := &storepb.HasRequest{Digests: make([]string, len(digests))}
	for i, d := range digests {
		req.Digests[i] = d.String()
	}
	resp, err := a.ExpertStoreClient.Has(ctx, req)
	if err != nil {
		return nil, a.wrap("has", err)
	}
	if len(resp.Present) != len(digests) {
		return nil, fmt.Errorf("%w: %s answered %d of %d digests", storepb.ErrBadRequest, r.Store, len(resp.Present), len(digests))
	}
	return resp.Present, nil
}

// List returns the blobs store r holds (of model, or all when model is ""), sorted by digest.
func (c *Client) List(ctx context.Context, r routing.Replica, model string) ([]BlobInfo, error) {
	a, err := c.api(r)
	if err != nil {
		return nil, err
	}
	// About 100 bytes per blob: a store with 100 000 blobs answers ~10 MB, more than the 9 MiB the
	// connection allows its other calls.
	resp, err := a.ExpertStoreClient.List(ctx, &storepb.ListRequest{Model: model}, grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		return nil, a.wrap("list", err)
	}
	out := make([]BlobInfo, len(resp.Blobs))
	for i, b := range resp.Blobs {
		if out[i], err = blobInfo(b); err != nil {
			return nil, fmt.Errorf("expertstore/client: list on %s: %w", r.Store, err)
		}
	}
	return out, nil
}

// Delete removes blob d from store r and reports whether the store had it.
func (c *Client) Delete(ctx context.Context, r routing.Replica, d blob.Digest) (bool, error) {
	a, err := c.api(r)
	if err != nil {
		return false, err
	}
	resp, err := a.ExpertStoreClient.Delete(ctx, &storepb.DeleteRequest{Digest: d.String()})
	if err != nil {
		return false, a.wrap("delete", err)
	}
	return resp.Deleted, nil
}

// Copy makes store to fetch blob ref from sources (tried in order, with the client's failover and
// checks, on the store's side) and keep it: new replicas never pass through the caller. It reports
// whether the store had the blob already.
func (c *Client) Copy(ctx context.Context, to routing.Replica, ref Ref, sources []routing.Replica) (existed bool, err error) {
	a, err := c.api(to)
	if err != nil {
		return false, err
	}
	req := &storepb.CopyRequest{Digest: ref.Digest.String(), Size: ref.Size}
	for _, s := range sources {
		req.Sources = append(req.Sources, &storepb.Source{Name: s.Store, GrpcAddr: s.GRPCAddr, DataAddr: s.DataAddr})
	}
	resp, err := a.ExpertStoreClient.Copy(ctx, req)
	if err != nil {
		return false, a.wrap("copy "+ref.Digest.String(), err)
	}
	return resp.Existed, nil
}

// Sources returns the replicas a CopyRequest names (the store's side of Copy).
func Sources(req *storepb.CopyRequest) []routing.Replica {
	out := make([]routing.Replica, len(req.Sources))
	for i, s := range req.Sources {
		out[i] = routing.Replica{Store: s.Name, State: routing.ReplicaReady, GRPCAddr: s.GrpcAddr, DataAddr: s.DataAddr}
	}
	return out
}

// Put uploads data to store r in CRC-checked chunks. It returns what the store says of the blob and
// whether it had it already (then nothing was written).
func (c *Client) Put(ctx context.Context, r routing.Replica, data []byte) (BlobInfo, bool, error) {
	a, err := c.api(r)
	if err != nil {
		return BlobInfo{}, false, err
	}
	d := blob.Sum(data)
	call := "put " + d.String()
	stream, err := a.ExpertStoreClient.Put(ctx)
	if err != nil {
		return BlobInfo{}, false, a.wrap(call, err)
	}
	if err := stream.Send(&storepb.PutRequest{Msg: &storepb.PutRequest_Header{Header: &storepb.PutHeader{Digest: d.String(), Size: int64(len(data))}}}); err != nil && !errors.Is(err, io.EOF) {
		return BlobInfo{}, false, a.wrap(call, err)
	}
	chunk := c.cfg.ChunkSize
	if chunk == 0 {
		chunk = blob.DefaultChunkSize
	}
	for off := 0; off < len(data); off += chunk {
		p := data[off:min(off+chunk, len(data))]
		err := stream.Send(&storepb.PutRequest{Msg: &storepb.PutRequest_Chunk{Chunk: &storepb.Chunk{Offset: int64(off), Data: p, Crc32C: blob.CRC32C(p)}}})
		if errors.Is(err, io.EOF) {
			break // the store answered early (it has the blob, or refused it): CloseAndRecv says which
		}
		if err != nil {
			return BlobInfo{}, false, a.wrap(call, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return BlobInfo{}, false, a.wrap(call, err)
	}
	info, err := blobInfo(resp.Blob)
	return info, resp.Existed, err
}
