// Package worker serves a model from the cluster: it downloads the model's dense weights from the
// stores, runs them with the engine on its device, and streams each MoE block's experts from the
// stores into a byte-bounded device cache while it computes, ahead of use as its mode allows.
//
//	HTTP (serve) ──▶ scheduler ──▶ engine Step ──▶ Pipeline (engine.Experts)
//	                                                 │ Predict / Hint (routing.ExpertKey)
//	                                                 ▼
//	snap.Expert(k): digest, size, replicas with addresses ──▶ client.Fetch ──▶ staging buffer
//	    ──▶ Device copy stream ──▶ Cache ──▶ Acquire
//	etcd: manifest, placements (watched) + store records ──▶ routing.Snapshot; gossip: role worker
//
// Read device.go (the CUDA-shaped seam), cache.go (budget, pins, eviction), modes.go (what each mode
// fetches when), pipeline.go (wants, pins and fetches into the cache), metrics.go (per-block counters,
// Prometheus), cluster.go (placement view, dense download), then this file (wiring and HTTP).
package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/worker/serve"
)

// Config configures a worker.
type Config struct {
	Name          string
	Cluster       string   // etcd prefix /pregate/<cluster>/; "" is "default"
	EtcdEndpoints []string // required
	Model         string   // the model's name in the cluster
	Mode          Mode
	Device        string // "cpu", or the GPU OpenAccelerator opens ("cuda:0")
	// OpenAccelerator, when set, opens the GPU the worker computes on and keeps its expert cache
	// (cacheBytes of device memory) in; the worker closes it. cmd/pregate sets it for --device
	// cuda[:N] in a build with -tags cuda. nil: the CPU.
	OpenAccelerator func(cacheBytes int64) (Accelerator, error)
	// ExpertCache is the device memory for experts, in bytes.
	ExpertCache int64
	// Staging is the number of pinned staging buffers (fetches in flight).
	Staging int
	// HTTPAddr serves the OpenAI API, /health, /ready and /metrics.
	HTTPAddr string
	// AdvertiseHost is the host other nodes reach this worker at (its record in etcd, gossip); ""
	// follows package netaddr's rule.
	AdvertiseHost string
	// TLS, when set, is the worker's mutual TLS towards the stores (every fetch).
	TLS *tlsutil.Reloader
	// APIKeys, when set, are the keys the OpenAI API (/v1/…) requires (Authorization: Bearer);
	// /health, /ready and /metrics stay open to probes and scrapers.
	APIKeys []string
	// MetricsAddr, when set, serves /metrics on a listen address of its own instead of HTTPAddr
	// (a port scrapers reach and clients do not).
	MetricsAddr string
	// ShutdownTimeout bounds Close's drain: from the moment Close begins, /ready answers 503 and new
	// completions are refused (503, Retry-After), while those in flight run to their end for up to
	// this long; then they are cut. 0 cuts them at once.
	ShutdownTimeout time.Duration
	// DataDir holds the dense weights downloaded from the stores (reused across restarts).
	DataDir string
	// Threads bounds the compute threads (0: all cores).
	Threads int
	// ComputePriority is given to the compute threads (the scheduler's and the CPU pool's) so that
	// they go before the fetch path on shared cores (compute.Priority). Above normal it needs
	// CAP_SYS_NICE and compute threads that leave a core to the fetch path (compute.CheckPriority):
	// otherwise the worker logs why and computes at normal priority.
	ComputePriority compute.Priority
	// MaxRunning and MaxWaiting bound the scheduler (sequences batched together, requests queued).
	MaxRunning, MaxWaiting int
	// MaxBatchedTokens bounds the tokens one scheduler step runs, so that a long prompt is
	// prefilled in chunks between the others' decode steps (serve.Config.MaxBatchedTokens; 0: no
	// bound).
	MaxBatchedTokens int
	// MaxModelLen bounds prompt plus max_tokens of one sequence (400 beyond); 0: the model's
	// positions for Mixtral (max_position_embeddings), DefaultSwitchMaxModelLen for Switch.
	MaxModelLen int
	// KVCacheBytes bounds the running sequences' KV caches (serve.Config.KVCacheBytes; 0: no
	// bound); QueueTimeout bounds a request's wait to be admitted (serve.Config.QueueTimeout).
	KVCacheBytes int64
	QueueTimeout time.Duration
	// Preemption admits by what a sequence needs now and preempts the newest when the KV cache is
	// full, instead of reserving each sequence's worst case (serve.Config.Preemption).
	Preemption bool
	// RequestTimeout bounds a request's life (serve.Config.RequestTimeout; 0: no bound).
	RequestTimeout time.Duration
	// EtcdGiveUp is how long a worker that is loading keeps trying to reach etcd before it fails
	// (a loaded worker does not need etcd: it serves from the placement it holds).
	EtcdGiveUp time.Duration
	// FetchAttemptTimeout bounds one replica's attempt at a fetch before the next replica is tried.
	FetchAttemptTimeout time.Duration
	// FetchCompression says when expert fetches ask stores for compressed blobs. The default is
	// never: a store compresses a blob on its first compressed request, which stalls that fetch
	// for tens of milliseconds, and on fast links (and on loopback, under load) raw wins anyway.
	// client.CompressAuto suits slow links with bf16 weights.
	FetchCompression client.Compression
	// Link, when set, wraps the fetcher of expert blobs from the stores, as the store → worker link
	// they cross: a benchmark paces it to give the fetches a real system's speed relative to this
	// machine's compute. The Fetcher it returns is called from many goroutines at once.
	Link func(Fetcher) Fetcher
	// Tracer, when set, follows the expert pipeline's steps (PipelineConfig.Tracer).
	Tracer Tracer
	// NoStepAhead turns off the prefetch of the next step's first-block experts
	// (PipelineConfig.NoStepAhead): a benchmark's baseline.
	NoStepAhead bool
	// Gossip, when set, joins the cluster's memberlist as a worker.
	Gossip *membership.Config
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of `pregate worker`.
func DefaultConfig() Config {
	h, _ := os.Hostname()
	return Config{Name: h, Mode: ModeSpeculative, Device: "cpu", ExpertCache: 4 << 30, Staging: 4,
		HTTPAddr: netaddr.Any(netaddr.WorkerHTTPPort), ShutdownTimeout: 30 * time.Second, EtcdGiveUp: time.Minute,
		DataDir: "pregate-worker", MaxRunning: 64, MaxWaiting: 256, MaxBatchedTokens: 512, QueueTimeout: time.Minute, RequestTimeout: 10 * time.Minute, FetchAttemptTimeout: 5 * time.Second,
		FetchCompression: client.CompressNever}
}

// Validate reports a configuration the worker cannot run with.
func (c Config) Validate() error {
	if _, err := ParseMode(string(c.Mode)); err != nil {
		return err
	}
	switch {
	case c.Name == "":
		return errors.New("worker: config: empty name")
	case len(c.EtcdEndpoints) == 0:
		return errors.New("worker: config: no etcd endpoints")
	case c.Model == "":
		return errors.New("worker: config: no model")
	case c.Device != "cpu" && c.OpenAccelerator == nil:
		return fmt.Errorf("worker: config: device %q without an accelerator to open (only cpu is built in; GPUs: a build with -tags cuda)", c.Device)
	case c.EtcdGiveUp <= 0:
		return fmt.Errorf("worker: config: etcd give-up %v", c.EtcdGiveUp)
	case c.ExpertCache <= 0 || c.DataDir == "":
		return fmt.Errorf("worker: config: expert cache %d bytes, data dir %q", c.ExpertCache, c.DataDir)
	case c.MaxBatchedTokens != 0 && c.MaxBatchedTokens < c.MaxRunning:
		return fmt.Errorf("worker: config: max batched tokens %d, want 0 or ≥ max running %d", c.MaxBatchedTokens, c.MaxRunning)
	case c.MaxModelLen < 0 || c.KVCacheBytes < 0 || c.QueueTimeout < 0 || c.RequestTimeout < 0:
		return fmt.Errorf("worker: config: max model len %d, KV cache bytes %d, queue timeout %v, request timeout %v",
			c.MaxModelLen, c.KVCacheBytes, c.QueueTimeout, c.RequestTimeout)
	case c.Preemption && c.KVCacheBytes == 0:
		return errors.New("worker: config: preemption needs a KV-cache budget (--kv-cache-preemption without --kv-cache-bytes)")
	}
	return nil
}

// DefaultSwitchMaxModelLen is a Switch Transformers worker's default MaxModelLen: its relative
// position buckets set no limit, but its encoder attends over the whole prompt at once, so a
// bound keeps one request's encoder pass (time and memory) in reason.
const DefaultSwitchMaxModelLen = 2048

// maxModelLen is the bound on prompt plus max_tokens for a model of config cfg: want (the
// configured value) or, when it is 0, the model's own. Mixtral's positions are a hard limit (a
// Step beyond them fails), so want may not exceed them.
func maxModelLen(cfg *model.Config, want int) (int, error) {
	switch {
	case cfg.Mixtral != nil:
		positions := cfg.Mixtral.MaxPositionEmbeddings
		if want == 0 || positions <= 0 {
			return cmp.Or(want, positions), nil
		}
		if want > positions {
			return 0, fmt.Errorf("worker: max model len %d is more than the model's %d positions", want, positions)
		}
		return want, nil
	case cfg.Switch != nil:
		return cmp.Or(want, DefaultSwitchMaxModelLen), nil
	}
	return want, nil
}

// Worker is a running worker.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	cli     *clientv3.Client
	ps      *placement.Store
	member  *membership.Member
	lis     net.Listener
	pubHTTP string // lis's address as published
	http    *http.Server
	metLis  net.Listener // MetricsAddr's, nil without
	metHTTP *http.Server
	keys    *apiKeys
	drain   drainer // refuses new completions once Close begins, waits for those in flight
	reg     *prometheus.Registry
	dev     Device
	fetcher *client.Client
	view    *clusterView

	fetchMetrics *fetchMetrics

	// Set once loaded.
	loaded   atomic.Bool
	loadErr  atomic.Pointer[error]
	loadDone chan struct{}
	mu       sync.Mutex
	pipe     *Pipeline
	model    engine.Model
	cpu      *compute.CPU // the engine's backend when the device has none of its own; else nil
	ckpt     *model.Checkpoint
	srv      atomic.Pointer[serve.Server]
	tok      atomic.Pointer[tokenizer.Tokenizer]

	g    *lifecycle.Group // every goroutine of the worker; its failure is the worker's
	once sync.Once
}

// New starts a worker: etcd, gossip, HTTP (answering /health at once and /ready once loaded), and
// the load of the model in the background (WaitReady waits for it).
func New(cfg Config) (w *Worker, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w = &Worker{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry(), loadDone: make(chan struct{}), g: lifecycle.NewGroup()}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("component", "worker", "node", cfg.Name)
	// The error returns give w = nil: the cleanup holds on to the worker being built.
	building := w
	defer func() {
		if err != nil {
			building.closeAll()
		}
	}()
	w.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if w.cli, err = placement.Dial(cfg.EtcdEndpoints, cfg.TLS); err != nil {
		return nil, err
	}
	w.ps = placement.New(w.cli, cfg.Cluster)
	if w.lis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("worker: http: %w", err)
	}
	if w.pubHTTP, err = netaddr.Publish(w.lis.Addr().String(), cfg.AdvertiseHost); err != nil {
		return nil, err
	}
	if cfg.Gossip != nil {
		gc := cfg.Gossip.ForNode(cfg.Name, membership.Meta{Role: membership.RoleWorker, HTTPAddr: w.HTTPAddr()}, cfg.Logger)
		if err := gc.Advertise(cfg.AdvertiseHost); err != nil {
			return nil, err
		}
		if w.member, err = membership.New(gc); err != nil {
			return nil, err
		}
	}
	if cfg.OpenAccelerator == nil {
		w.dev = NewCPU()
	} else {
		if w.dev, err = cfg.OpenAccelerator(cfg.ExpertCache); err != nil {
			return nil, fmt.Errorf("worker: device %s: %w", cfg.Device, err)
		}
	}
	ccfg := client.DefaultConfig()
	ccfg.AttemptTimeout = cfg.FetchAttemptTimeout
	ccfg.Logger = w.log
	ccfg.TLS = cfg.TLS
	ccfg.Transport = client.NewDataTransport(client.DataTransportConfig{Compression: cfg.FetchCompression, TLS: cfg.TLS})
	w.fetcher = client.New(ccfg)
	w.fetchMetrics = newFetchMetrics(w.reg, w.fetcher)
	w.view = newClusterView(w.ps, cfg.Model, w.log)

	w.keys = newAPIKeys(cfg.APIKeys)
	if cfg.MetricsAddr != "" {
		if w.metLis, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("worker: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(w.reg, promhttp.HandlerOpts{}))
		w.metHTTP = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		w.g.Go("metrics http", func(context.Context) error {
			if err := w.metHTTP.Serve(w.metLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	w.http = &http.Server{Handler: w.handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 64 << 10}
	w.g.Go("http", func(context.Context) error {
		if err := w.http.Serve(w.lis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	w.g.Go("placement view", func(ctx context.Context) error { w.view.run(ctx, time.Second); return nil })
	w.g.Go("load", func(ctx context.Context) error {
		if err := w.load(ctx); err != nil {
			if ctx.Err() == nil {
				w.log.Error("loading the model failed", "model", cfg.Model, "err", err)
			}
			w.loadErr.Store(&err)
			close(w.loadDone)
			return fmt.Errorf("model %q: %w", cfg.Model, err) // a worker that cannot load has failed
		}
		w.loaded.Store(true)
		close(w.loadDone)
		w.log.Info("ready", "model", cfg.Model, "mode", cfg.Mode, "http", w.HTTPAddr())
		srv := w.srv.Load()
		select { // the scheduler's failure is the worker's
		case <-srv.Failed():
			return srv.Err()
		case <-ctx.Done():
			return nil
		}
	})
	w.g.Go("registration", func(ctx context.Context) error { w.register(ctx); return nil })
	return w, nil
}

// Err reports the worker's fatal failure (its model could not load, its HTTP server or scheduler
// died), nil while it runs (and after a Close that no failure caused). etcd going away is not one: the worker serves from the
// placement it has.
func (w *Worker) Err() error { return w.g.Err() }

// Failed is closed when the worker fails (Err says why).
func (w *Worker) Failed() <-chan struct{} { return w.g.Failed() }

// Serve blocks until ctx ends (then it closes the worker and returns nil) or the worker fails (it
// closes it and returns the failure).
func (w *Worker) Serve(ctx context.Context) error { return lifecycle.Serve(ctx, w) }

// load waits for the manifest and the placement view, downloads the dense weights, loads the
// engine and starts the pipeline and the HTTP API.
func (w *Worker) load(ctx context.Context) error {
	man, manRev, err := waitManifest(ctx, w.cli, w.ps, w.cfg.Model, w.cfg.EtcdGiveUp, w.log)
	if err != nil {
		return err
	}
	// The view must have caught up with the publication: its revision, and every blob of the
	// manifest (a Txn's events arrive one by one, so a snapshot may hold part of a revision).
	for !w.view.synced.Load() || w.view.snap.Load().Epoch() < manRev || !w.view.holds(man) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	seed := rand.Uint64()
	dir := filepath.Join(w.cfg.DataDir, "models", man.Name)
	if err := materializeDense(ctx, dir, man, w.view, w.fetcher, seed); err != nil {
		return err
	}
	if man.Tokenizer != "" {
		tok, err := tokenizer.Load(dir)
		if err != nil {
			return fmt.Errorf("worker: model %q: %w", man.Name, err)
		}
		w.tok.Store(tok)
	}
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		return err
	}
	cf := newClusterFetcher(w.view, w.fetcher, man, seed)
	cf.observe = w.fetchMetrics.observe
	var fetcher Fetcher = cf
	if w.cfg.Link != nil {
		fetcher = w.cfg.Link(fetcher)
	}
	pipe, err := NewPipeline(ctx, PipelineConfig{Mode: w.cfg.Mode, Device: w.dev, Fetcher: fetcher,
		Names: model.ExpertNames(ckpt.Config()), NumExperts: model.ExpertsPerBlock(ckpt.Config()), Shapes: expertShapes(ckpt.Config()), DType: man.DType,
		CacheBudget: w.cfg.ExpertCache, Staging: w.cfg.Staging, Tracer: w.cfg.Tracer, NoStepAhead: w.cfg.NoStepAhead, Registry: w.reg, Logger: w.log})
	if err != nil {
		ckpt.Close()
		return err
	}
	// The engine computes where the experts are: on the device's own backend (a GPU: one host
	// thread, the scheduler's, drives it), else on the CPU with the configured threads.
	cd, onDevice := w.dev.(ComputeDevice)
	prio, hostThreads := w.cfg.ComputePriority, w.cfg.Threads
	if onDevice {
		hostThreads = 1
	}
	if err := compute.CheckPriority(prio, hostThreads); err != nil {
		w.log.Warn("the compute threads run at normal priority", "err", err)
		prio = compute.PriorityNormal
	}
	var be compute.Backend
	var cpu *compute.CPU
	if onDevice {
		be = cd.Backend()
	} else {
		var perr error
		if cpu, perr = compute.NewCPUConfig(compute.CPUConfig{Threads: w.cfg.Threads, Priority: prio}); perr != nil {
			w.log.Warn("the compute pool's threads keep their priority", "err", perr)
		}
		be = cpu
	}
	closeCPU := func() {
		if cpu != nil {
			cpu.Close()
		}
	}
	m, err := engine.Load(ckpt, be, engine.Options{Experts: pipe, Speculate: w.cfg.Mode.Speculates()})
	if err == nil {
		err = CheckMode(w.cfg.Mode, m.Info().PreGated)
	}
	if err != nil {
		pipe.Close()
		closeCPU()
		ckpt.Close()
		return err
	}
	wrapped := wrapEncoder(WrapModel(m, pipe), m, pipe)
	sc := serve.DefaultConfig()
	sc.ModelName, sc.Model, sc.Registry, sc.Logger = man.Name, wrapped, w.reg, w.log
	sc.ComputePriority = prio
	sc.Tokenizer = w.tok.Load()
	sc.MaxRunning, sc.MaxWaiting, sc.MaxBatchedTokens = w.cfg.MaxRunning, w.cfg.MaxWaiting, w.cfg.MaxBatchedTokens
	sc.KVCacheBytes, sc.QueueTimeout, sc.RequestTimeout = w.cfg.KVCacheBytes, w.cfg.QueueTimeout, w.cfg.RequestTimeout
	sc.Preemption = w.cfg.Preemption
	sc.Ready = w.readyErr
	sc.MaxModelLen, err = maxModelLen(ckpt.Config(), w.cfg.MaxModelLen)
	var srv *serve.Server
	if err == nil {
		srv, err = serve.New(sc)
	}
	if err != nil {
		pipe.Close()
		closeCPU()
		ckpt.Close()
		return err
	}
	w.mu.Lock()
	w.pipe, w.model, w.cpu, w.ckpt = pipe, wrapped, cpu, ckpt
	w.mu.Unlock()
	w.srv.Store(srv)
	return nil
}

// expertShapes is what every expert blob's tensors must be under cfg.
func expertShapes(cfg *model.Config) [3][2]int {
	w1, w3, w2 := model.ExpertShapes(cfg)
	return [3][2]int{w1, w3, w2}
}

// register keeps the worker's record in etcd under a lease while it runs.
func (w *Worker) register(ctx context.Context) {
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(w.cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		for ctx.Err() == nil {
			rec := placement.WorkerRecord{Name: w.cfg.Name, HTTPAddr: w.HTTPAddr(), Model: w.cfg.Model, Mode: string(w.cfg.Mode), Updated: time.Now().UTC()}
			if err := w.ps.PutWorker(ctx, rec, sess.Lease()); err != nil && ctx.Err() == nil {
				w.log.Warn("worker record", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-sess.Done():
			case <-time.After(5 * time.Second):
				continue
			}
			break
		}
		sess.Close()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// readyErr is nil once the model is loaded and placement is synced, until shutdown begins.
func (w *Worker) readyErr() error {
	if w.drain.draining() {
		return errShuttingDown
	}
	if p := w.loadErr.Load(); p != nil {
		return fmt.Errorf("loading model %q failed: %w", w.cfg.Model, *p)
	}
	switch {
	case !w.view.synced.Load():
		return errors.New("placement not synced yet")
	case !w.loaded.Load():
		return fmt.Errorf("loading model %q", w.cfg.Model)
	}
	return nil
}

// WaitReady waits until the worker serves, or its load failed, or ctx ends.
func (w *Worker) WaitReady(ctx context.Context) error {
	select {
	case <-w.loadDone:
		return w.readyErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Worker) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(rw http.ResponseWriter, _ *http.Request) { rw.Write([]byte("ok\n")) }) //nolint:errcheck
	mux.HandleFunc("GET /ready", func(rw http.ResponseWriter, _ *http.Request) {
		if err := w.readyErr(); err != nil {
			http.Error(rw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		rw.Write([]byte("ready\n")) //nolint:errcheck
	})
	if w.metLis == nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(w.reg, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/v1/", w.keys.require(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost { // a completion: counted, and refused once shutdown begins
			if !w.drain.enter() {
				rw.Header().Set("Retry-After", "1")
				rw.Header().Set("Content-Type", "application/json")
				rw.WriteHeader(http.StatusServiceUnavailable)
				rw.Write([]byte(`{"error":{"message":"the worker is shutting down","type":"server_error","param":null,"code":"shutting_down"}}`)) //nolint:errcheck
				return
			}
			defer w.drain.leave()
		}
		srv := w.srv.Load()
		if srv == nil {
			rw.Header().Set("Retry-After", "1")
			msg := `{"error":{"message":"the model is loading","type":"server_error","param":null,"code":"model_loading"}}`
			if err := w.readyErr(); err != nil {
				msg = fmt.Sprintf(`{"error":{"message":%q,"type":"server_error","param":null,"code":"model_loading"}}`, err.Error())
			}
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			rw.Write([]byte(msg)) //nolint:errcheck
			return
		}
		srv.Handler().ServeHTTP(rw, r)
	}))
	return mux
}

// MetricsAddr returns the address of the separate /metrics listener, "" without one.
func (w *Worker) MetricsAddr() string {
	if w.metLis == nil {
		return ""
	}
	return w.metLis.Addr().String()
}

// HTTPAddr returns the address of the HTTP API as published.
func (w *Worker) HTTPAddr() string { return w.pubHTTP }

// Pipeline returns the expert pipeline (nil until loaded).
func (w *Worker) Pipeline() *Pipeline {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pipe
}

// Model returns the engine model the worker serves (nil until loaded).
func (w *Worker) Model() engine.Model {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.model
}

// Server returns the HTTP API's server (nil until loaded).
func (w *Worker) Server() *serve.Server { return w.srv.Load() }

// Tokenizer returns the model's tokenizer, loaded with the model from the files its import
// carried (nil until loaded, and for a model imported without one).
func (w *Worker) Tokenizer() *tokenizer.Tokenizer { return w.tok.Load() }

// Close stops the worker gracefully: /ready answers 503 at once and new completions are refused,
// those in flight finish (for up to ShutdownTimeout), then HTTP, scheduler, fetches, gossip and
// etcd stop.
func (w *Worker) Close() error {
	w.once.Do(func() {
		if n := w.drain.wait(w.cfg.ShutdownTimeout); n > 0 {
			w.log.Warn("shutdown timeout: cutting requests in flight", "requests", n, "timeout", w.cfg.ShutdownTimeout)
		}
		w.closeAll()
	})
	return nil
}

func (w *Worker) closeAll() {
	// Stop loading, then the scheduler (which fails the requests in flight, so their handlers
	// return), then HTTP, then everything under them.
	if w.http != nil {
		w.g.Cancel() // the load, the placement view, the registration; HTTP is shut down below
		<-w.loadDone
	}
	if srv := w.srv.Load(); srv != nil {
		srv.Close()
	}
	if w.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if w.http.Shutdown(ctx) != nil {
			w.http.Close()
		}
		cancel()
	} else if w.lis != nil {
		w.lis.Close()
	}
	if w.metHTTP != nil {
		w.metHTTP.Close()
	} else if w.metLis != nil {
		w.metLis.Close()
	}
	w.g.Stop()
	w.mu.Lock()
	if w.pipe != nil {
		w.pipe.Close()
	}
	if w.model != nil {
		w.model.Close()
	}
	if w.cpu != nil {
		w.cpu.Close()
	}
	if w.ckpt != nil {
		w.ckpt.Close()
	}
	w.mu.Unlock()
	if w.dev != nil {
		w.dev.Close()
	}
	if w.fetcher != nil {
		w.fetcher.Close()
	}
	if w.member != nil {
		w.member.Leave(time.Second) //nolint:errcheck // best effort
		w.member.Close()
	}
	if w.cli != nil {
		w.cli.Close()
	}
}
