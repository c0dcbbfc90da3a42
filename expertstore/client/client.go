// Package client fetches expert blobs from the stores and uploads them.
//
// Fetch(ctx, ref, replicas, dst) writes a blob straight into a caller-provided buffer (the worker's
// pinned staging memory): the transport verifies each chunk's CRC32C as it lands, the client then
// checks the whole blob's digest before returning, so corrupt bytes never reach the caller's device.
// Each attempt has its own deadline; on an error or a deadline the next replica takes over from the
// start. A second replica is hedged when the first is slower than the latency observed so far
// (hedges are capped at a fraction of fetches), and concurrent fetches of the same blob collapse into
// one transfer (singleflight), the followers copying the leader's bytes.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// Ref names a blob and its size.
type Ref struct {
	Digest blob.Digest
	Size   int64
}

// Config configures a Client.
type Config struct {
	// AttemptTimeout bounds one replica's attempt; the next replica then takes over.
	AttemptTimeout time.Duration
	// HedgeFraction caps hedged attempts as a fraction of fetches (0 disables hedging).
	HedgeFraction float64
	// HedgeMinDelay is the shortest wait before hedging.
	HedgeMinDelay time.Duration
	// ChunkSize asked of the stores (0: theirs).
	ChunkSize int
	// Transport moves the bytes; nil: the data plane (over TLS when TLS is set).
	Transport Transport
	// TLS, when set, is this node's mutual TLS: gRPC and the default data plane use it, and
	// plaintext stores are not reached.
	TLS *tlsutil.Reloader
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{AttemptTimeout: 10 * time.Second, HedgeFraction: 0.05, HedgeMinDelay: 2 * time.Millisecond}
}

// FetchStats counts what a client's fetches did.
type FetchStats struct {
	Fetches, Bytes, Failovers, Hedges, HedgeWins, Collapsed int64
}

// Client fetches and puts blobs. Safe for concurrent use.
type Client struct {
	cfg       Config
	log       *slog.Logger
	conns     *Conns
	transport Transport
	lat       latency
	speeds    storeSpeeds

	mu      sync.Mutex
	flights map[flightKey]*flight

	fetches, bytes, failovers, hedges, hedgeWins, collapsed atomic.Int64
}

// New returns a client.
func New(cfg Config) *Client {
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultConfig().AttemptTimeout
	}
	c := &Client{cfg: cfg, log: cfg.Logger, conns: NewTLSConns(cfg.TLS), flights: map[flightKey]*flight{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.transport = cfg.Transport
	if c.transport == nil {
		c.transport = NewDataTransport(DataTransportConfig{ChunkSize: cfg.ChunkSize, TLS: cfg.TLS})
	}
	return c
}

// Close closes the client's connections.
func (c *Client) Close() error {
	return errors.Join(c.transport.Close(), c.conns.Close())
}

// FetchStats reports the client's fetch counters.
func (c *Client) FetchStats() FetchStats {
	return FetchStats{Fetches: c.fetches.Load(), Bytes: c.bytes.Load(), Failovers: c.failovers.Load(),
		Hedges: c.hedges.Load(), HedgeWins: c.hedgeWins.Load(), Collapsed: c.collapsed.Load()}
}

type flightKey struct {
	d    blob.Digest
	size int64
}

type flight struct {
	done      chan struct{}
	err       error
	buf       []byte
	followers sync.WaitGroup
}

// Fetch writes the blob ref into dst (len(dst) must equal ref.Size), trying replicas in order.
// The bytes are CRC-checked per chunk and digest-checked as a whole before Fetch returns nil.
func (c *Client) Fetch(ctx context.Context, ref Ref, replicas []routing.Replica, dst []byte) error {
	if int64(len(dst)) != ref.Size {
		return fmt.Errorf("%w: buffer of %d bytes for a %d-byte blob", storepb.ErrBadRequest, len(dst), ref.Size)
	}
	key := flightKey{ref.Digest, ref.Size}
	c.mu.Lock()
	if f := c.flights[key]; f != nil {
		f.followers.Add(1)
		c.mu.Unlock()
		c.collapsed.Add(1)
		err := c.follow(ctx, f, dst)
		if errors.Is(err, errLeaderGaveUp) {
			return c.Fetch(ctx, ref, replicas, dst)
		}
		return err
	}
	f := &flight{done: make(chan struct{}), buf: dst}
	c.flights[key] = f
	c.mu.Unlock()

	f.err = c.fetch(ctx, ref, replicas, dst)
	c.mu.Lock()
	delete(c.flights, key)
	c.mu.Unlock()
	close(f.done)
	f.followers.Wait() // they copy from dst: keep it untouched until they are done
	return f.err
}

// errLeaderGaveUp tells a follower that the flight it joined ended on its leader's own deadline or
// cancellation: the follower, whose context is still live, fetches for itself.
var errLeaderGaveUp = errors.New("expertstore/client: collapsed fetch's leader gave up")

// follow waits for another caller's fetch of the same blob and copies its bytes.
func (c *Client) follow(ctx context.Context, f *flight, dst []byte) error {
	defer f.followers.Done()
	select {
	case <-f.done:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if f.err != nil {
		if ctx.Err() == nil && (errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded)) {
			return errLeaderGaveUp
		}
		return f.err
	}
	copy(dst, f.buf)
	return nil
}

// fetch tries each replica in turn, hedging the next one when the current one is slow.
func (c *Client) fetch(ctx context.Context, ref Ref, replicas []routing.Replica, dst []byte) error {
	if len(replicas) == 0 {
		return fmt.Errorf("%w: no replica of %s", storepb.ErrNotFound, ref.Digest)
	}
	c.fetches.Add(1)
	var errs []error
	start := time.Now()
	replicas = c.speeds.order(replicas, start)
	for i := 0; i < len(replicas); i++ {
		if i > 0 {
			c.failovers.Add(1)
		}
		var hedge *routing.Replica
		if i+1 < len(replicas) {
			hedge = &replicas[i+1]
		}
		usedHedge, err := c.attempt(ctx, ref, replicas[i], hedge, dst)
		if err == nil {
			c.bytes.Add(ref.Size)
			c.lat.observe(time.Since(start), ref.Size)
			return nil
		}
		errs = append(errs, err)
		c.log.Debug("fetch attempt failed", "digest", ref.Digest, "replica", replicas[i].Store, "err", err)
		if ctx.Err() != nil {
			break
		}
		if usedHedge {
			i++ // the hedge's replica failed too
		}
	}
	if ctx.Err() != nil {
		errs = append(errs, context.Cause(ctx))
	}
	return fmt.Errorf("expertstore/client: fetch %s (%d replicas): %w", ref.Digest, len(replicas), errors.Join(errs...))
}

// attempt fetches from r into dst and verifies the digest; when hedge is set and the hedge budget
// allows, it also starts hedge after the expected latency, into a scratch buffer, and the first
// good copy wins. It reports whether the hedge ran.
func (c *Client) attempt(ctx context.Context, ref Ref, r routing.Replica, hedge *routing.Replica, dst []byte) (bool, error) {
	type result struct {
		hedge bool
		err   error
	}
	actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	results := make(chan result, 2)
	get := func(ctx context.Context, r routing.Replica, buf []byte, isHedge bool) {
		// The transport checks the digest of a whole blob as its chunks land.
		began := time.Now()
		err := c.transport.Fetch(ctx, r, ref.Digest, 0, buf, true)
		if err == nil {
			c.speeds.observe(r.Store, time.Since(began), ref.Size, false, time.Now())
		}
		results <- result{isHedge, err}
	}
	start := time.Now()
	pctx, pcancel := context.WithCancel(actx)
	defer pcancel()
	go get(pctx, r, dst, false)

	var timer <-chan time.Time
	if hedge != nil && c.cfg.HedgeFraction > 0 {
		if delay, ok := c.lat.hedgeDelay(ref.Size, c.cfg.HedgeMinDelay); ok {
			t := time.NewTimer(delay)
			defer t.Stop()
			timer = t.C
		}
	}
	var scratch []byte
	hctx, hcancel := context.WithCancel(actx)
	defer hcancel()
	running, hedged := 1, false
	var firstErr error
	for running > 0 {
		select {
		case <-timer:
			timer = nil
			if float64(c.hedges.Load()+1) > c.cfg.HedgeFraction*float64(c.fetches.Load()) {
				continue
			}
			c.hedges.Add(1)
			hedged = true
			scratch = make([]byte, len(dst))
			running++
			go get(hctx, *hedge, scratch, true)
		case res := <-results:
			running--
			if res.err != nil {
				if firstErr == nil {
					firstErr = res.err
				}
				continue
			}
			if res.hedge {
				// The hedge won: the primary was at least this slow. Stop it, wait until it no
				// longer writes dst, then copy.
				c.speeds.observe(r.Store, time.Since(start), ref.Size, true, time.Now())
				pcancel()
				for running > 0 {
					<-results
					running--
				}
				copy(dst, scratch)
				c.hedgeWins.Add(1)
			} else {
				hcancel()
				for running > 0 {
					<-results
					running--
				}
			}
			return hedged, nil
		}
	}
	return hedged, firstErr
}

// Conns pools one gRPC connection per store address.
type Conns struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	creds credentials.TransportCredentials
}

// NewConns returns an empty pool of plaintext connections.
func NewConns() *Conns { return NewTLSConns(nil) }

// NewTLSConns returns an empty pool whose connections use r's mutual TLS (plaintext when r is nil).
func NewTLSConns(r *tlsutil.Reloader) *Conns {
	p := &Conns{conns: map[string]*grpc.ClientConn{}, creds: insecure.NewCredentials()}
	if r != nil {
		p.creds = r.CredentialsAs(tlsutil.RoleStore) // whatever this dials must be a store
	}
	return p
}

// Store returns the raw gRPC API of replica r's store. Callers use the Client's typed methods
// (Put, Has, List, Delete, Stats, Copy); this is for transports and for tests of the wire itself.
func (p *Conns) Store(r routing.Replica) (storepb.ExpertStoreClient, error) {
	cc, err := p.Conn(r.GRPCAddr)
	if err != nil {
		return nil, err
	}
	return storepb.NewExpertStoreClient(cc), nil
}

// Conn returns the pooled connection to addr.
func (p *Conns) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return nil, storepb.ErrClosed
	}
	if cc := p.conns[addr]; cc != nil {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(p.creds),
		// gRPC's default reconnect backoff grows to 2 minutes: a store that restarts would go
		// unheard (probes, copies) for that long. Stores are probed every few seconds anyway.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond,
			Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(9<<20), grpc.MaxCallSendMsgSize(9<<20)))
	if err != nil {
		return nil, fmt.Errorf("expertstore/client: %s: %w", addr, err)
	}
	p.conns[addr] = cc
	return cc, nil
}

// Close closes every connection.
func (p *Conns) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, cc := range p.conns {
		errs = append(errs, cc.Close())
	}
	p.conns = nil
	return errors.Join(errs...)
}
