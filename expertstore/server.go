// Package expertstore is the store daemon: the place expert weights live when they are not on a GPU.
//
// Data flow: an importer (or another store) Puts a blob over gRPC in CRC32C-checked chunks; the
// store verifies the whole blob's digest, writes it to its data dir (temp file, fsync, rename: a
// crash never leaves half a blob) and keeps it in RAM. Workers Fetch blobs either over gRPC or over
// the data plane (package dataplane: plain TCP framing, zero-copy writes from RAM), each chunk with
// its CRC32C. On start the store reloads its data dir and verifies every blob; one that fails its
// digest is quarantined and reported, never served. Bytes in flight are bounded; over the bound the
// store answers RESOURCE_EXHAUSTED and the client tries another replica. The store announces itself
// (addresses, capacity, usage) through memberlist gossip.
package expertstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/expertstore/dataplane"
	"github.com/pregate/pregate/internal/atomicfile"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/internal/tlsutil"
)

// maxListBytes bounds a List response (about 100 bytes per blob).
const maxListBytes = 64 << 20

// Config configures a store.
type Config struct {
	// NodeName names the store in the cluster (and in its gossip membership).
	NodeName string
	// ListenAddr is the gRPC address ("127.0.0.1:0" picks a free port).
	ListenAddr string
	// DataListenAddr is the data plane's address; empty: ListenAddr's host with a free port.
	DataListenAddr string
	// HTTPAddr serves /health, /ready and /metrics ("" disables it).
	HTTPAddr string
	// AdvertiseHost is the host other nodes are told to dial (gossip, gRPC, data plane); empty:
	// the listen address itself when it names one, the host's first non-loopback address when it
	// is a wildcard (package netaddr).
	AdvertiseHost string
	// DataDir persists blobs; empty keeps them in memory only.
	DataDir string
	// MemoryLimit is the most blob bytes the store holds (its capacity); Puts beyond it are refused
	// with RESOURCE_EXHAUSTED.
	MemoryLimit int64
	// MaxBlobBytes is the largest blob a Put may carry.
	MaxBlobBytes int64
	// MaxInflightBytes bounds the bytes being received and sent at once.
	MaxInflightBytes int64
	// ChunkSize is the default chunk size of Fetch streams.
	ChunkSize int
	// PutIdleTimeout ends a Put stream that sends nothing for this long; IdleTimeout closes a
	// data-plane or gRPC connection with no request for this long; WriteTimeout cuts a data-plane
	// peer that reads none of a chunk for this long.
	PutIdleTimeout, IdleTimeout, WriteTimeout time.Duration
	// MaxConns and MaxConnsPerPeer cap the connections each of gRPC and the data plane keeps open,
	// in all and from one address (0: no cap); MaxStreams caps concurrent gRPC streams per
	// connection.
	MaxConns, MaxConnsPerPeer, MaxStreams int
	// TLS, when set, is the store's mutual TLS: gRPC and the data plane accept only clients with a
	// certificate of the cluster's CA, and the store's own copies from other stores use it.
	TLS *tlsutil.Reloader
	// Gossip, when set, joins the cluster's memberlist with this configuration (its Meta is filled
	// in by the store).
	Gossip *membership.Config
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a store configuration with the defaults of `pregate store`.
func DefaultConfig() Config {
	return Config{
		ListenAddr:       netaddr.Any(netaddr.StoreGRPCPort),
		MemoryLimit:      8 << 30,
		MaxBlobBytes:     2 << 30,
		MaxInflightBytes: 1 << 30,
		ChunkSize:        blob.DefaultChunkSize,
		PutIdleTimeout:   30 * time.Second,
		IdleTimeout:      2 * time.Minute,
		WriteTimeout:     30 * time.Second,
		// A worker keeps one data-plane connection per fetch in flight (its staging buffers) and
		// a gRPC one; a coordinator a few: 256 per peer is far above either.
		MaxConns:        4096,
		MaxConnsPerPeer: 256,
		MaxStreams:      256,
	}
}

// Validate reports a configuration the store cannot run with.
func (c Config) Validate() error {
	switch {
	case c.NodeName == "":
		return errors.New("expertstore: config: node name is empty")
	case c.ListenAddr == "":
		return errors.New("expertstore: config: listen address is empty")
	case c.MemoryLimit <= 0:
		return fmt.Errorf("expertstore: config: memory limit %d", c.MemoryLimit)
	case c.MaxBlobBytes <= 0:
		return fmt.Errorf("expertstore: config: max blob bytes %d", c.MaxBlobBytes)
	case c.MaxInflightBytes <= 0:
		return fmt.Errorf("expertstore: config: max in-flight bytes %d", c.MaxInflightBytes)
	case c.ChunkSize < 64<<10 || c.ChunkSize > 4<<20:
		return fmt.Errorf("expertstore: config: chunk size %d outside [64 KiB, 4 MiB]", c.ChunkSize)
	case c.PutIdleTimeout <= 0 || c.IdleTimeout <= 0 || c.WriteTimeout <= 0:
		return fmt.Errorf("expertstore: config: put idle %v, idle %v, write %v: want positive", c.PutIdleTimeout, c.IdleTimeout, c.WriteTimeout)
	case c.MaxConns < 0 || c.MaxConnsPerPeer < 0 || c.MaxStreams < 0:
		return fmt.Errorf("expertstore: config: connection caps %d, %d per peer, %d streams: want ≥ 0", c.MaxConns, c.MaxConnsPerPeer, c.MaxStreams)
	}
	return nil
}

// entry is one blob held in RAM.
type entry struct {
	data []byte
	info *storepb.BlobInfo
	crcs []uint32 // CRC32C of each ChunkSize chunk, for aligned fetches

	// The compressed form, made on the first request for it and kept (nil when compression does
	// not save at least minSaving of the bytes).
	compressOnce sync.Once
	frame        []byte
	frameCRCs    []uint32
}

// minSaving is the least fraction of a blob's bytes compression must save to be used.
const minSaving = 0.10

// compressed returns the blob's compressed frame and its chunk CRCs, or nil.
func (s *Server) compressed(e *entry) ([]byte, []uint32) {
	e.compressOnce.Do(func() {
		elem := 1
		if h, _, err := blob.Parse(e.data); err == nil && h.ElemSize() > 0 {
			elem = h.ElemSize()
		}
		if frame, ok := blob.Compress(e.data, elem, minSaving); ok {
			e.frame, e.frameCRCs = frame, blob.ChunkCRCs(frame, s.cfg.ChunkSize)
			s.compressedBytes.Add(int64(len(frame)))
		}
	})
	return e.frame, e.frameCRCs
}

// Server is a running store.
type Server struct {
	cfg   Config
	log   *slog.Logger
	epoch uint64

	mu    sync.RWMutex
	blobs map[blob.Digest]*entry
	used  int64 // bytes held, reserved by Puts in progress included

	inflight    *semaphore.Weighted
	inflightN   atomic.Int64
	fetches     atomic.Int64
	fetched     atomic.Int64
	rejected    atomic.Int64
	quarantined atomic.Int64
	// compressedBytes is held by compressed forms of blobs (a cache beside the blobs, not counted
	// against the memory limit).
	compressedBytes atomic.Int64

	grpc    *grpc.Server
	health  *health.Server
	lis     net.Listener
	dataLis net.Listener
	httpLis net.Listener
	http    *http.Server
	metrics *metrics
	// The addresses published (gossip meta, Stats): the listeners' with the advertise host.
	pubGRPC, pubData, pubHTTP string
	serving                   atomic.Bool // blobs loaded, listening and joined: Ready
	inflightReqs              atomic.Int64
	received                  atomic.Int64
	dataConns, grpcConns      *connLimiter
	refusedConns              atomic.Int64
	deniedConns               atomic.Int64 // data-plane peers whose certificate may not read
	member                    *membership.Member
	peers                     *client.Client // fetches blobs from other stores (Copy)

	connMu sync.Mutex
	conns  map[net.Conn]struct{}

	g         *lifecycle.Group // every goroutine of the store; its failure is the store's
	closing   chan struct{}    // closed when shutdown begins
	closeOnce sync.Once
	closeErr  error
	metaDirty chan struct{}
}

// New loads the data dir, starts listening and serving, and joins the cluster. On any failure it
// releases what it had started.
func New(cfg Config) (s *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s = &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		epoch:     uint64(time.Now().UnixMilli()),
		blobs:     map[blob.Digest]*entry{},
		inflight:  semaphore.NewWeighted(cfg.MaxInflightBytes),
		conns:     map[net.Conn]struct{}{},
		g:         lifecycle.NewGroup(),
		closing:   make(chan struct{}),
		metaDirty: make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("node", cfg.NodeName, "role", "store")
	s.peers = client.New(client.Config{Logger: s.log, ChunkSize: cfg.ChunkSize, TLS: cfg.TLS})
	defer func() {
		if err != nil {
			s.Stop()
			s = nil
		}
	}()
	s.metrics = newMetrics(s)
	// /health answers while the data dir loads (a big one takes minutes); /ready waits for it.
	if cfg.HTTPAddr != "" {
		if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return s, fmt.Errorf("expertstore: listen http %s: %w", cfg.HTTPAddr, err)
		}
		if s.pubHTTP, err = netaddr.Publish(s.httpLis.Addr().String(), cfg.AdvertiseHost); err != nil {
			return s, err
		}
		s.http = &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
		s.g.Go("http", s.serveHTTP)
	}
	if cfg.DataDir != "" {
		if err := s.load(); err != nil {
			return s, err
		}
	}
	if s.lis, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
		return s, fmt.Errorf("expertstore: listen %s: %w", cfg.ListenAddr, err)
	}
	s.dataConns, s.grpcConns = newConnLimiter(cfg.MaxConns, cfg.MaxConnsPerPeer), newConnLimiter(cfg.MaxConns, cfg.MaxConnsPerPeer)
	dataAddr := cfg.DataListenAddr
	if dataAddr == "" {
		host, _, _ := net.SplitHostPort(s.lis.Addr().String())
		dataAddr = net.JoinHostPort(host, "0")
	}
	if s.dataLis, err = net.Listen("tcp", dataAddr); err != nil {
		return s, fmt.Errorf("expertstore: listen data plane %s: %w", dataAddr, err)
	}
	if s.pubGRPC, err = netaddr.Publish(s.lis.Addr().String(), cfg.AdvertiseHost); err != nil {
		return s, err
	}
	if s.pubData, err = netaddr.Publish(s.dataLis.Addr().String(), cfg.AdvertiseHost); err != nil {
		return s, err
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(dataplane.MaxChunk + (64 << 10)), // Put chunks up to 4 MiB
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: cfg.IdleTimeout}),
		// Peers may ping to keep their connections warm, but not more than every 10 s.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Fetch chunks are at most 4 MiB, but a List of a store holding 100 000 blobs is ~10 MB.
		grpc.MaxSendMsgSize(maxListBytes),
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor()),
	}
	if cfg.MaxStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(cfg.MaxStreams)))
	}
	if cfg.TLS != nil {
		// Every call is authorized from the caller's certificate (authz.go), after its metrics.
		opts = append(opts, grpc.Creds(cfg.TLS.Credentials()),
			grpc.ChainUnaryInterceptor(policy.UnaryInterceptor()), grpc.ChainStreamInterceptor(policy.StreamInterceptor()))
	}
	s.grpc = grpc.NewServer(opts...)
	storepb.RegisterExpertStoreServer(s.grpc, &service{s: s})
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(storepb.ExpertStore_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.metrics.grpc.InitializeMetrics(s.grpc)
	s.g.Go("grpc", func(context.Context) error {
		lis := &limitListener{Listener: s.lis, l: s.grpcConns, refused: func() { s.refusedConns.Add(1) }}
		if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err // Serve returns nil after Stop or GracefulStop
		}
		return nil
	})
	s.g.Go("data plane", s.serveData)
	if cfg.Gossip != nil {
		gc := cfg.Gossip.ForNode(cfg.NodeName, s.meta(), s.log)
		if err := gc.Advertise(cfg.AdvertiseHost); err != nil {
			return s, err
		}
		if s.member, err = membership.New(gc); err != nil {
			return s, err
		}
		s.g.Go("gossip", s.publishMeta)
	}
	s.serving.Store(true)
	s.log.Info("store serving", "grpc", s.Addr(), "data", s.DataAddr(), "http", s.HTTPAddr(), "blobs", s.meta().Blobs, "quarantined", s.quarantined.Load())
	return s, nil
}

// Err reports the store's fatal failure (its gRPC server or data plane stopped serving), nil while
// it serves (and after a Close that no failure caused).
func (s *Server) Err() error { return s.g.Err() }

// Failed is closed when the store fails (Err says why).
func (s *Server) Failed() <-chan struct{} { return s.g.Failed() }

// Serve blocks until ctx ends (then it closes the store gracefully and returns nil) or the store
// fails (it stops it and returns the failure).
func (s *Server) Serve(ctx context.Context) error { return lifecycle.Serve(ctx, s) }

// Addr is the store's gRPC address as published (what other nodes dial).
func (s *Server) Addr() string { return s.pubGRPC }

// DataAddr is the data plane's address as published.
func (s *Server) DataAddr() string { return s.pubData }

// Member is the store's gossip membership (nil without gossip).
func (s *Server) Member() *membership.Member { return s.member }

// NodeName names the store.
func (s *Server) NodeName() string { return s.cfg.NodeName }

func (s *Server) meta() membership.Meta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := membership.Meta{Role: membership.RoleStore, Capacity: s.cfg.MemoryLimit, Used: s.used,
		Blobs: int64(len(s.blobs)), Epoch: s.epoch}
	m.GRPCAddr, m.DataAddr = s.pubGRPC, s.pubData
	return m
}

// markDirty asks publishMeta to gossip new usage figures (coalesced, never blocks).
func (s *Server) markDirty() {
	select {
	case s.metaDirty <- struct{}{}:
	default:
	}
}

// publishMeta gossips usage changes at most every 200 ms.
func (s *Server) publishMeta(context.Context) error {
	for {
		select {
		case <-s.closing:
			return nil
		case <-s.metaDirty:
		}
		m := s.meta()
		if err := s.member.UpdateMeta(func(old *membership.Meta) { *old = m }); err != nil {
			s.log.Warn("gossip meta update", "err", err)
		}
		select {
		case <-s.closing:
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Close stops the store gracefully, as for a restart: it tells the cluster it stopped (gossip
// StateStopped: its blobs stay placed on it while it comes back, within the coordinator's restart
// grace), stops accepting requests, lets in-progress ones finish (up to 5 s) and waits for its
// goroutines. Removing a store for good is `pregate drain`, then Close. Idempotent.
func (s *Server) Close() error {
	s.shutdown(true)
	return s.closeErr
}

// Stop stops the store at once, as a crash would: no gossip leave, streams cut mid-flight.
func (s *Server) Stop() { s.shutdown(false) }

func (s *Server) shutdown(graceful bool) {
	s.closeOnce.Do(func() {
		close(s.closing)
		if s.member != nil {
			if graceful {
				s.closeErr = s.member.Stop()
			} else {
				s.closeErr = s.member.Kill()
			}
		}
		if s.health != nil {
			s.health.Shutdown()
		}
		if s.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s.http.Shutdown(ctx) //nolint:errcheck // best effort on the way out
			cancel()
		} else if s.httpLis != nil {
			s.httpLis.Close()
		}
		if s.dataLis != nil {
			s.dataLis.Close()
		}
		if !graceful {
			s.closeConns()
		}
		if s.grpc != nil {
			if graceful {
				done := make(chan struct{})
				go func() { s.grpc.GracefulStop(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					s.grpc.Stop()
					<-done
				}
			} else {
				s.grpc.Stop()
			}
		} else if s.lis != nil {
			s.lis.Close()
		}
		s.closeConns()
		s.g.Stop()
		if s.peers != nil {
			s.peers.Close()
		}
	})
}

// reserve accounts size bytes of a blob about to be stored against the memory limit.
func (s *Server) reserve(size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used+size > s.cfg.MemoryLimit {
		return fmt.Errorf("%w: %d bytes used of %d, blob needs %d", storepb.ErrFull, s.used, s.cfg.MemoryLimit, size)
	}
	s.used += size
	return nil
}

func (s *Server) unreserve(size int64) {
	s.mu.Lock()
	s.used -= size
	s.mu.Unlock()
}

// acquire takes n bytes of the in-flight budget without waiting.
func (s *Server) acquire(n int64) error {
	if n > s.cfg.MaxInflightBytes || !s.inflight.TryAcquire(n) {
		s.rejected.Add(1)
		return fmt.Errorf("%w: %d bytes requested, %d of %d in flight", storepb.ErrOverloaded, n, s.inflightN.Load(), s.cfg.MaxInflightBytes)
	}
	s.inflightN.Add(n)
	return nil
}

func (s *Server) release(n int64) {
	s.inflightN.Add(-n)
	s.inflight.Release(n)
}

// get returns a blob held in RAM.
func (s *Server) get(d blob.Digest) (*entry, error) {
	s.mu.RLock()
	e := s.blobs[d]
	s.mu.RUnlock()
	if e == nil {
		return nil, fmt.Errorf("%w: %s on %s", storepb.ErrNotFound, d, s.cfg.NodeName)
	}
	return e, nil
}

// add stores verified bytes (already reserved): on disk first, then in RAM.
func (s *Server) add(d blob.Digest, data []byte) (*entry, error) {
	if s.cfg.DataDir != "" {
		if err := atomicfile.WriteFile(s.blobPath(d), data); err != nil {
			return nil, fmt.Errorf("expertstore: persist: %w", err)
		}
	}
	e := s.newEntry(d, data)
	s.mu.Lock()
	s.blobs[d] = e
	s.mu.Unlock()
	s.received.Add(int64(len(data)))
	s.markDirty()
	return e, nil
}

func (s *Server) newEntry(d blob.Digest, data []byte) *entry {
	info := &storepb.BlobInfo{Digest: d.String(), Size: int64(len(data)), Block: -1, Expert: -1}
	if h, _, err := blob.Parse(data); err == nil {
		info.Kind, info.Model = string(h.Kind), h.Model
		info.Block, info.Expert = int32(h.Block), int32(h.Expert)
	}
	return &entry{data: data, info: info, crcs: blob.ChunkCRCs(data, s.cfg.ChunkSize)}
}

// remove deletes a blob from RAM and disk.
func (s *Server) remove(d blob.Digest) (bool, error) {
	s.mu.Lock()
	e := s.blobs[d]
	if e != nil {
		delete(s.blobs, d)
		s.used -= int64(len(e.data))
		s.compressedBytes.Add(-int64(len(e.frame)))
	}
	s.mu.Unlock()
	if e == nil {
		return false, nil
	}
	s.markDirty()
	if s.cfg.DataDir != "" {
		if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return true, fmt.Errorf("expertstore: delete %s: %w", d, err)
		}
	}
	return true, nil
}

// list returns the blobs held, sorted by digest, optionally of one model.
func (s *Server) list(model string) []*storepb.BlobInfo {
	s.mu.RLock()
	out := make([]*storepb.BlobInfo, 0, len(s.blobs))
	for _, e := range s.blobs {
		if model == "" || e.info.Model == model {
			out = append(out, e.info)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out
}

// usage returns the blobs held and the bytes used.
func (s *Server) usage() (blobs, used int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return int64(len(s.blobs)), s.used
}

// Stats reports the store's counters.
func (s *Server) Stats() *storepb.StatsResponse {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return &storepb.StatsResponse{
		Node: s.cfg.NodeName, Blobs: int64(len(s.blobs)), UsedBytes: s.used, CapacityBytes: s.cfg.MemoryLimit,
		Quarantined: s.quarantined.Load(), InflightBytes: s.inflightN.Load(), Fetches: s.fetches.Load(),
		FetchedBytes: s.fetched.Load(), Rejected: s.rejected.Load(), DataAddr: s.pubData, Epoch: s.epoch,
		CompressedBytes: s.compressedBytes.Load(),
	}
}

// --- disk ---

func (s *Server) blobPath(d blob.Digest) string {
	return filepath.Join(s.cfg.DataDir, "blobs", d.String()+".blob")
}

// load reads and verifies every blob of the data dir; a blob whose bytes do not match the digest in
// its name is moved to quarantine/ and counted, never served. Leftover temp files are removed.
func (s *Server) load() error {
	dir := filepath.Join(s.cfg.DataDir, "blobs")
	qdir := filepath.Join(s.cfg.DataDir, "quarantine")
	for _, d := range []string{dir, qdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("expertstore: data dir: %w", err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("expertstore: data dir: %w", err)
	}
	q, err := os.ReadDir(qdir)
	if err == nil {
		s.quarantined.Store(int64(len(q)))
	}
	for _, de := range ents {
		name := de.Name()
		path := filepath.Join(dir, name)
		if strings.Contains(name, ".tmp") {
			os.Remove(path) // an interrupted write
			continue
		}
		hexd, ok := strings.CutSuffix(name, ".blob")
		d, perr := blob.ParseDigest(hexd)
		if !ok || perr != nil {
			s.log.Warn("ignoring unknown file in data dir", "file", path)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("expertstore: load %s: %w", path, err)
		}
		if got := blob.Sum(data); got != d {
			s.quarantined.Add(1)
			s.log.Error("blob failed its digest check: quarantined", "file", path, "digest", got)
			if err := os.Rename(path, filepath.Join(qdir, name)); err != nil {
				return fmt.Errorf("expertstore: quarantine %s: %w", path, err)
			}
			continue
		}
		if s.used+int64(len(data)) > s.cfg.MemoryLimit {
			return fmt.Errorf("%w: data dir %s holds more than the memory limit %d", storepb.ErrFull, s.cfg.DataDir, s.cfg.MemoryLimit)
		}
		s.used += int64(len(data))
		s.blobs[d] = s.newEntry(d, data)
	}
	return nil
}

// trackConn registers a data-plane connection so Stop can cut it.
func (s *Server) trackConn(c net.Conn, add bool) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if add {
		select {
		case <-s.closing:
			return false
		default:
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	return true
}

func (s *Server) closeConns() {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}
