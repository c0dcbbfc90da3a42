// Package coordinator is the control plane: it decides where every blob lives and moves blobs
// between stores as they come and go. It keeps no state of its own: etcd (internal/placement) is
// the authority, gossip (internal/membership) tells which stores are alive, and any number of
// coordinators may run, of which the elected leader alone writes.
//
//	memberlist events, drain marks, new manifests, a ticker
//	      │ (debounced)
//	      ▼
//	leader: reconcile ──▶ probe stores (Stats) ──▶ write store records
//	                  ──▶ routing.Place (weighted rendezvous, capacity) over the live stores
//	                  ──▶ routing.Plan (copies first, then drops)
//	                  ──▶ per blob: mark new replicas copying ─▶ store-to-store Copy ─▶ one Txn marks
//	                      them ready and drops the old ones ─▶ Delete on the stores dropped
//
// Every write is an ApplyIf guarded by the leader's election key and the ModRevision it read, so a
// deposed leader, or one racing an import, writes nothing.
package coordinator

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/embedetcd"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
)

// Config configures a coordinator.
type Config struct {
	// Name is the coordinator's node name (in gossip and in the election).
	Name string
	// Cluster names the cluster's etcd prefix (/pregate/<cluster>/); "" is "default".
	Cluster string
	// EtcdEndpoints are the etcd client URLs. Empty: start an embedded etcd in DataDir/etcd.
	EtcdEndpoints []string
	// EtcdClientURL is where the embedded etcd listens for clients ("" picks 127.0.0.1 and a free
	// port); EtcdPeerURL where it listens for its peers (same rule).
	EtcdClientURL, EtcdPeerURL string
	// EtcdInitialCluster makes the embedded etcd one member of several (name=http://host:2380,…,
	// this coordinator's Name among them; see embedetcd.Config.InitialCluster); "" a cluster of one.
	// EtcdClusterState is "new" (default) or "existing".
	EtcdInitialCluster, EtcdClusterState string
	// AdvertiseHost is the host other nodes reach this coordinator at (HTTP, gossip, etcd URLs);
	// "" follows package netaddr's rule (the listen address, or the first non-loopback address for
	// a wildcard one).
	AdvertiseHost string
	// DataDir holds the embedded etcd's data.
	DataDir string
	// Replicas is the replication factor R (default 2): every blob on min(R, live stores) stores.
	Replicas int
	// HTTPAddr serves /health, /v1/cluster, /v1/status and /metrics ("" disables it).
	HTTPAddr string
	// Gossip joins the cluster's memberlist (its Meta is filled in). Nil: no gossip; every store
	// record in etcd is then taken as alive (for tools and tests that drive stores directly).
	Gossip *membership.Config
	// DeadGrace is how long a store must be dead before its blobs are copied elsewhere: a store
	// that restarts within it keeps its blobs and nothing moves. 0 re-replicates at once.
	DeadGrace time.Duration
	// JoinSettle is how long after a store joins the moves that only rebalance wait (for the next
	// stores of a scale-out, so that blobs move once); blobs short of replicas are repaired at once.
	JoinSettle time.Duration
	// RestartGrace is DeadGrace for a store that stopped gracefully (SIGTERM: a restart, a rolling
	// update, a pod rescheduled): longer, since the store said it would be back.
	RestartGrace time.Duration
	// Interval is the longest time between two reconcile passes (events start one sooner).
	Interval time.Duration
	// SessionTTL is the leader lease in seconds: a leader that dies is replaced this long after.
	SessionTTL int
	// EtcdGiveUp is how long the coordinator keeps trying to reach an external etcd (for its
	// election session) before it fails for good: Err reports it and `pregate coordinator` exits,
	// to be restarted. An embedded etcd that stops fails it at once; one that has lost its quorum
	// (other coordinators down) is waited for.
	EtcdGiveUp time.Duration
	// CopyParallelism bounds the blobs being copied at once.
	CopyParallelism int
	// CopyTimeout bounds one store-to-store copy.
	CopyTimeout time.Duration
	// AntiEntropyInterval is how often the leader lists every store's blobs and reconciles
	// placement with them (a store that restarts is listed at once): replicas a store no longer
	// holds are re-replicated, and status shows them missing within this period.
	AntiEntropyInterval time.Duration
	// OrphanGrace is how long a blob that no placement names may stay on a store before the leader
	// deletes it (imports in progress are exempt).
	OrphanGrace time.Duration
	// MaxStoreCapacity caps the capacity any store is taken to have (0: what each reports). A
	// store's capacity is what it answers over mutual TLS, not what it gossips, but a store's
	// certificate in the wrong hands could still claim a terabyte and draw every blob to itself;
	// the operator's cap (the chart sets it to the stores' memory limit) bounds that.
	MaxStoreCapacity int64
	// TLS, when set, is the coordinator's mutual TLS towards the stores (probes, copies, deletes).
	TLS *tlsutil.Reloader
	// Logger receives the coordinator's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of `pregate coordinator`.
func DefaultConfig() Config {
	return Config{
		Name:            hostname(),
		Replicas:        2,
		DeadGrace:       30 * time.Second,
		RestartGrace:    5 * time.Minute,
		JoinSettle:      10 * time.Second,
		Interval:        10 * time.Second,
		SessionTTL:      10,
		EtcdGiveUp:      time.Minute,
		CopyParallelism: 8,
		CopyTimeout:     5 * time.Minute,
		// Listing 15 000 blobs costs a store ~2 ms of CPU and ~1.5 MB on the wire: every 30 s is
		// cheap, and bounds how long a lost replica goes unnoticed.
		AntiEntropyInterval: 30 * time.Second,
		OrphanGrace:         10 * time.Minute,
	}
}

// withTLS is c with TLS set.
func withTLS(c client.Config, r *tlsutil.Reloader) client.Config {
	c.TLS = r
	return c
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "coordinator"
	}
	return h
}

// Validate reports a configuration the coordinator cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("coordinator: config: empty name")
	case c.Replicas < 1:
		return fmt.Errorf("coordinator: config: replicas %d, want ≥ 1", c.Replicas)
	case len(c.EtcdEndpoints) == 0 && c.DataDir == "":
		return errors.New("coordinator: config: no etcd endpoints and no data dir for the embedded etcd")
	case c.Interval <= 0 || c.SessionTTL < 1 || c.CopyParallelism < 1 || c.CopyTimeout <= 0 || c.DeadGrace < 0 || c.RestartGrace < 0:
		return fmt.Errorf("coordinator: config: interval %v, session TTL %ds, copy parallelism %d, copy timeout %v, dead grace %v, restart grace %v",
			c.Interval, c.SessionTTL, c.CopyParallelism, c.CopyTimeout, c.DeadGrace, c.RestartGrace)
	case c.EtcdGiveUp <= 0:
		return fmt.Errorf("coordinator: config: etcd give-up %v", c.EtcdGiveUp)
	case c.MaxStoreCapacity < 0:
		return fmt.Errorf("coordinator: config: max store capacity %d", c.MaxStoreCapacity)
	case c.AntiEntropyInterval <= 0 || c.OrphanGrace < 0:
		return fmt.Errorf("coordinator: config: anti-entropy interval %v, orphan grace %v", c.AntiEntropyInterval, c.OrphanGrace)
	}
	return nil
}

// LeaderInfo is the value a coordinator campaigns with: who leads, and where to reach it.
type LeaderInfo struct {
	Name     string `json:"name"`
	HTTPAddr string `json:"http_addr,omitempty"`
}

// Coordinator is a running coordinator. Close stops it.
type Coordinator struct {
	cfg     Config
	log     *slog.Logger
	etcd    *embedetcd.Server // nil with external etcd
	cli     *clientv3.Client
	ps      *placement.Store
	member  *membership.Member
	stores  *client.Client // the store API (probes, copies, deletes)
	http    *http.Server
	httpLis net.Listener
	pubHTTP string // httpLis's address as published
	metrics *metrics

	kick     chan struct{} // starts a reconcile pass soon
	leading  atomic.Bool
	passes   atomic.Int64
	mu       sync.Mutex
	lastPass PassReport
	seen     map[string]seenStore // stores ever seen, for their records' Joined/Since
	ae       *antiEntropy         // the leader's anti-entropy memory (reset when it starts leading)

	g    *lifecycle.Group // every goroutine of the coordinator; its failure is the coordinator's
	once sync.Once
}

// New starts a coordinator: the embedded etcd if no endpoints are given, the etcd client, gossip,
// the HTTP endpoint and the campaign for leadership. It returns once all are up (it does not wait
// to be elected). On an error everything started is stopped.
func New(cfg Config) (_ *Coordinator, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Not the named result: the error returns set that to nil before the cleanup below runs.
	c := &Coordinator{cfg: cfg, log: cfg.Logger, stores: client.New(withTLS(client.DefaultConfig(), cfg.TLS)), kick: make(chan struct{}, 1),
		seen: map[string]seenStore{}, metrics: newMetrics(), g: lifecycle.NewGroup()}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "coordinator", "node", cfg.Name)
	defer func() {
		if err != nil {
			c.closeAll()
		}
	}()

	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		ec := embedetcd.DefaultConfig()
		ec.Name = cfg.Name
		ec.Dir = filepath.Join(cfg.DataDir, "etcd")
		ec.ClientURL, ec.PeerURL, ec.AdvertiseHost = cfg.EtcdClientURL, cfg.EtcdPeerURL, cfg.AdvertiseHost
		ec.InitialCluster, ec.ClusterState = cfg.EtcdInitialCluster, cfg.EtcdClusterState
		ec.Logger = cfg.Logger
		if cfg.TLS != nil {
			ec.TLS = cfg.TLS.Files()
		}
		if c.etcd, err = embedetcd.Start(ec); err != nil {
			return nil, err
		}
		endpoints = c.etcd.Endpoints()
		c.log.Info("embedded etcd", "endpoints", endpoints, "dir", ec.Dir)
	}
	if c.cli, err = placement.Dial(endpoints, cfg.TLS); err != nil {
		return nil, err
	}
	c.ps = placement.New(c.cli, cfg.Cluster)
	if cfg.TLS != nil && allHTTPS(endpoints) {
		c.g.Go("etcd auth", c.enableEtcdAuth)
	}

	if cfg.HTTPAddr != "" {
		if c.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("coordinator: http: %w", err)
		}
		if c.pubHTTP, err = netaddr.Publish(c.httpLis.Addr().String(), cfg.AdvertiseHost); err != nil {
			return nil, err
		}
	}
	if cfg.Gossip != nil {
		gc := cfg.Gossip.ForNode(cfg.Name, membership.Meta{Role: membership.RoleCoordinator, HTTPAddr: c.HTTPAddr()}, cfg.Logger)
		if err := gc.Advertise(cfg.AdvertiseHost); err != nil {
			return nil, err
		}
		if c.member, err = membership.New(gc); err != nil {
			return nil, err
		}
	}

	if c.httpLis != nil {
		c.http = &http.Server{Handler: c.handler(), ReadHeaderTimeout: 10 * time.Second}
		lis := c.httpLis
		if cfg.TLS != nil {
			// HTTPS; /v1/* need a client certificate of the cluster, the probes and /metrics not.
			lis = tls.NewListener(lis, cfg.TLS.HTTPServerConfig())
		}
		c.g.Go("http", func(context.Context) error {
			if err := c.http.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if c.etcd != nil {
		c.g.Go("embedded etcd", func(ctx context.Context) error {
			select {
			case err := <-c.etcd.Err():
				if err == nil {
					err = errors.New("stopped")
				}
				return err
			case <-ctx.Done():
				return nil
			}
		})
	}
	if c.member != nil {
		c.g.Go("gossip", func(ctx context.Context) error { c.pumpMembership(ctx); return nil })
		c.g.Go("gossip rejoin", func(ctx context.Context) error { c.rejoinFromRecords(ctx); return nil })
	}
	c.g.Go("cluster watch", func(ctx context.Context) error { c.watchCluster(ctx); return nil })
	c.g.Go("election", c.campaignLoop)
	return c, nil
}

// Err reports the coordinator's fatal failure (its HTTP server died, its embedded etcd stopped, or
// etcd stayed unreachable for EtcdGiveUp), nil while it runs (and after a Close that no failure caused).
func (c *Coordinator) Err() error { return c.g.Err() }

// Failed is closed when the coordinator fails (Err says why).
func (c *Coordinator) Failed() <-chan struct{} { return c.g.Failed() }

// Serve blocks until ctx ends (then it closes the coordinator and returns nil) or the coordinator
// fails (it closes it and returns the failure).
func (c *Coordinator) Serve(ctx context.Context) error { return lifecycle.Serve(ctx, c) }

// Close stops the coordinator: it resigns leadership (another coordinator takes over at once),
// leaves gossip and stops the embedded etcd.
func (c *Coordinator) Close() error {
	c.once.Do(c.closeAll)
	return nil
}

func (c *Coordinator) closeAll() {
	if c.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.http.Shutdown(ctx) //nolint:errcheck // best effort on the way out
		cancel()
	} else if c.httpLis != nil {
		c.httpLis.Close()
	}
	c.g.Stop()
	if c.member != nil {
		c.member.Leave(time.Second) //nolint:errcheck // leaving fast matters more than confirmation
		c.member.Close()
	}
	c.stores.Close()
	if c.cli != nil {
		c.cli.Close()
	}
	if c.etcd != nil {
		c.etcd.Close()
	}
}

// EtcdEndpoints returns the endpoints the coordinator talks to (the embedded etcd's, if any).
func (c *Coordinator) EtcdEndpoints() []string { return c.cli.Endpoints() }

// HTTPAddr returns the address of the HTTP endpoint as published, "" when disabled.
func (c *Coordinator) HTTPAddr() string { return c.pubHTTP }

// GossipAddr returns the coordinator's gossip address, "" without gossip.
func (c *Coordinator) GossipAddr() string {
	if c.member == nil {
		return ""
	}
	return c.member.Addr()
}

// Name is the coordinator's node name.
func (c *Coordinator) Name() string { return c.cfg.Name }

// IsLeader reports whether this coordinator is the elected leader now.
func (c *Coordinator) IsLeader() bool { return c.leading.Load() }

// Kick asks for a reconcile pass soon (the leader runs it; others ignore it).
func (c *Coordinator) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// LastPass returns the report of the latest reconcile pass this coordinator ran.
func (c *Coordinator) LastPass() PassReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastPass
}

// Passes returns how many reconcile passes this coordinator has completed.
func (c *Coordinator) Passes() int64 { return c.passes.Load() }

// BytesCopied returns the bytes this coordinator has had copied between stores.
func (c *Coordinator) BytesCopied() int64 { return c.metrics.copiedBytes.Load() }

// Counters are totals of what a coordinator did, over all its terms as leader.
type Counters struct {
	CopyErrors      int64 // store-to-store copies that failed (or whose target did not hold the blob after)
	MissingReplicas int64 // ready replicas removed because their store did not hold the blob
	OrphansDeleted  int64 // unreferenced blobs deleted after the grace
}

// Counters returns the coordinator's totals.
func (c *Coordinator) Counters() Counters {
	return Counters{CopyErrors: c.metrics.copyErrors.Load(), MissingReplicas: c.metrics.missing.Load(), OrphansDeleted: c.metrics.orphans.Load()}
}

// campaignLoop campaigns for leadership, leads until its session ends or ctx does, and campaigns
// again. It fails (returns an error) when no etcd session could be had for EtcdGiveUp.
func (c *Coordinator) campaignLoop(ctx context.Context) error {
	info, _ := json.Marshal(LeaderInfo{Name: c.cfg.Name, HTTPAddr: c.HTTPAddr()})
	var unreachable time.Time // since when no session could be had; zero while etcd answers
	for ctx.Err() == nil {
		sess, err := c.newSession(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if unreachable.IsZero() {
				unreachable = time.Now()
			}
			// An external etcd gone for EtcdGiveUp fails the coordinator (to be restarted). Its own
			// embedded member is different: while it runs (its stopping is fatal anyway), a lost
			// quorum comes back when the other coordinators do, and exiting would take this member
			// away from that quorum.
			if c.etcd == nil && time.Since(unreachable) >= c.cfg.EtcdGiveUp {
				return fmt.Errorf("etcd unreachable for %v: %w", c.cfg.EtcdGiveUp, err)
			}
			c.log.Warn("etcd session", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		unreachable = time.Time{}
		el := c.ps.Election(sess)
		if err := el.Campaign(ctx, string(info)); err != nil {
			sess.Close()
			if ctx.Err() == nil {
				c.log.Warn("campaign", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		c.log.Info("elected leader")
		c.leading.Store(true)
		c.metrics.leader.Set(1)
		c.lead(ctx, sess, el)
		c.leading.Store(false)
		c.metrics.leader.Set(0)
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		el.Resign(rctx) //nolint:errcheck // the session's lease ends it anyway
		cancel()
		sess.Close()
		c.log.Info("no longer leader")
	}
	return nil
}

// newSession grants the election's lease with a bounded wait (a session's own context must live
// as long as the session, so the grant gets its own) and starts keeping it alive.
func (c *Coordinator) newSession(ctx context.Context) (*concurrency.Session, error) {
	// A grant that takes longer than the lease it asks for is no use anyway.
	gctx, cancel := context.WithTimeout(ctx, min(5*time.Second, time.Duration(c.cfg.SessionTTL)*time.Second))
	lease, err := c.cli.Grant(gctx, int64(c.cfg.SessionTTL))
	cancel()
	if err != nil {
		return nil, err
	}
	return concurrency.NewSession(c.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(c.cfg.SessionTTL), concurrency.WithContext(ctx))
}

// lead runs reconcile passes while sess lives: on each kick (debounced) and at least every
// Interval.
func (c *Coordinator) lead(ctx context.Context, sess *concurrency.Session, el *concurrency.Election) {
	guard := placement.LeaderGuard(el)
	c.ae = newAntiEntropy()
	if err := c.ps.PutClusterConfig(ctx, placement.ClusterConfig{Replicas: c.cfg.Replicas}); err != nil {
		c.log.Warn("publish cluster config", "err", err)
	}
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	// A pass stops when the session ends (the lease is lost: another coordinator may lead).
	sctx, sdone := context.WithCancel(ctx)
	defer sdone()
	go func() {
		select {
		case <-sess.Done():
			sdone()
		case <-sctx.Done():
		}
	}()
	handOff := make(chan struct{})
	defer func() { sdone(); <-handOff }()
	go func() { defer close(handOff); c.keepRaftLeadershipAway(sctx) }()
	for {
		rep, err := c.reconcile(sctx, guard)
		c.mu.Lock()
		c.lastPass = rep
		c.mu.Unlock()
		c.passes.Add(1)
		switch {
		case errors.Is(err, placement.ErrNotLeader):
			c.log.Warn("deposed while reconciling")
			return
		case err != nil && ctx.Err() == nil:
			c.log.Warn("reconcile", "err", err)
		}
		again := rep.Pending() || err != nil // more to do: go on soon, not at the next tick
		wait := c.cfg.Interval
		if again {
			wait = 200 * time.Millisecond
		} else if !rep.NextRetry.IsZero() {
			wait = max(10*time.Millisecond, min(wait, time.Until(rep.NextRetry)))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-sess.Done():
			timer.Stop()
			return
		case <-c.kick:
			timer.Stop()
			sleep(ctx, 50*time.Millisecond) // let a burst of events settle
		case <-tick.C:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// pumpMembership turns gossip events about stores into reconcile kicks.
func (c *Coordinator) pumpMembership(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-c.member.Events():
			if !ok {
				return
			}
			if ev.Node.Meta.Role == membership.RoleStore {
				c.Kick()
			}
		}
	}
}

// watchCluster kicks a pass whenever a manifest or a drain mark changes.
func (c *Coordinator) watchCluster(ctx context.Context) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range c.cli.Watch(wctx, c.ps.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly()) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if c.ps.IsTrigger(string(ev.Kv.Key)) {
					c.Kick()
					break
				}
			}
		}
		cancel()
		sleep(ctx, 500*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// metrics are the coordinator's counters. The totals are atomics (Counters and BytesCopied read
// them) that the Prometheus registry reads too, so each is counted once.
type metrics struct {
	reg                             *prometheus.Registry
	leader                          prometheus.Gauge
	copies, copyErrors, copiedBytes atomic.Int64
	missing, orphans                atomic.Int64
	under, lost                     prometheus.Gauge
	passSeconds                     prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg:    prometheus.NewRegistry(),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_coordinator_leader", Help: "1 while this coordinator is the leader."}),
		under:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_blobs_under_replicated", Help: "Blobs with fewer ready replicas on live stores than wanted, at the last pass."}),
		lost:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_blobs_unavailable", Help: "Blobs with no ready replica on a live store, at the last pass."}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pregate_coordinator_reconcile_seconds",
			Help: "Duration of reconcile passes.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
	}
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	m.reg.MustRegister(m.leader, m.under, m.lost, m.passSeconds,
		counter("pregate_coordinator_copies_total", "Store-to-store blob copies completed.", &m.copies),
		counter("pregate_coordinator_copy_errors_total", "Store-to-store blob copies that failed.", &m.copyErrors),
		counter("pregate_coordinator_copied_bytes_total", "Bytes copied between stores.", &m.copiedBytes),
		counter("pregate_coordinator_missing_replicas_total", "Ready replicas removed from placement because their store did not hold the blob.", &m.missing),
		counter("pregate_coordinator_orphans_deleted_total", "Blobs deleted from stores because no placement named them for the orphan grace.", &m.orphans),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ClusterInfo is what GET /v1/cluster answers: how tools find the cluster's etcd from a coordinator.
type ClusterInfo struct {
	Cluster       string   `json:"cluster"`
	Name          string   `json:"name"`
	EtcdEndpoints []string `json:"etcd_endpoints"`
	Leader        bool     `json:"leader"`
}

func (c *Coordinator) handler() http.Handler {
	mux := http.NewServeMux()
	c.healthHandlers(mux)
	v1 := func(pattern string, h http.HandlerFunc) {
		if c.cfg.TLS != nil {
			mux.Handle(pattern, tlsutil.RequireIdentity(h))
			return
		}
		mux.Handle(pattern, h)
	}
	v1("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, ClusterInfo{Cluster: cmp.Or(c.cfg.Cluster, "default"), Name: c.cfg.Name,
			EtcdEndpoints: c.EtcdMembers(r.Context()), Leader: c.IsLeader()})
	})
	v1("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := ReadStatus(r.Context(), c.cli, c.ps, c.cfg.Replicas)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client went away
}

// enableEtcdAuth turns etcd's authentication on, with the users and roles of docs/SECURITY.md,
// retrying until it succeeds: a member of several may have no quorum yet when the coordinator
// starts. Until then, only certificates of the cluster's CA reach etcd at all.
func (c *Coordinator) enableEtcdAuth(ctx context.Context) error {
	for delay := 500 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.ps.EnableAuth(actx)
		cancel()
		if err == nil {
			c.log.Info("etcd authentication on")
			return nil
		}
		c.log.Warn("etcd authentication not on yet; retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// allHTTPS reports whether every endpoint is an https URL: etcd over TLS, whose clients are
// known by their certificates (over plaintext, authentication would lock everyone out).
func allHTTPS(endpoints []string) bool {
	for _, e := range endpoints {
		if !strings.HasPrefix(e, "https://") {
			return false
		}
	}
	return len(endpoints) > 0
}
