package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/worker"
)

func newWorkerCmd() *cobra.Command {
	cfg := worker.DefaultConfig()
	var (
		cf            clusterFlags
		mode          string
		cache         = byteSize(cfg.ExpertCache)
		readyFile, lv string
		gossip        gossipFlags
		noGossip      bool
		compression   string
		apiKeyFile    string
		tlsf          tlsFlags
		device        = cfg.Device
	)
	cmd := &cobra.Command{
		Use:   "worker --model NAME",
		Short: "Serve a model from the cluster: dense layers here, experts streamed from the stores (OpenAI HTTP API)",
		Long: "Run a worker. It downloads the model's dense weights from the stores, streams experts into its\n" +
			"expert cache as --mode says, and serves /v1/completions, /v1/models, /health, /ready, /metrics.\n" +
			"SIGTERM drains it: /ready answers 503, new requests are refused, those in flight finish (up to\n" +
			"--shutdown-timeout), then it exits 0. Every flag falls back to the environment variable PREGATE_<FLAG>.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			log, err := newLogger(lv)
			if err != nil {
				return err
			}
			m, err := worker.ParseMode(mode)
			if err != nil {
				return err
			}
			cfg.Mode, cfg.ExpertCache, cfg.Logger, cfg.Cluster = m, int64(cache), log, cf.cluster
			spec, err := parseDevice(device)
			if err != nil {
				return err
			}
			if err := setWorkerDevice(&cfg, spec); err != nil {
				return err
			}
			cfg.AdvertiseHost = gossip.advertise
			if cfg.TLS, err = tlsf.load(); err != nil {
				return err
			}
			if apiKeyFile != "" {
				if cfg.APIKeys, err = worker.LoadAPIKeys(apiKeyFile); err != nil {
					return fmt.Errorf("--api-key-file: %w", err)
				}
			}
			switch compression {
			case "never":
				cfg.FetchCompression = client.CompressNever
			case "auto":
				cfg.FetchCompression = client.CompressAuto
			case "always":
				cfg.FetchCompression = client.CompressAlways
			default:
				return fmt.Errorf("--fetch-compression %q: want never, auto or always", compression)
			}
			cfg.EtcdEndpoints = splitList(cf.endpoints)
			if len(cfg.EtcdEndpoints) == 0 && cf.coordinator != "" {
				info, err := fetchClusterInfo(cmd.Context(), cf.coordinator, cfg.TLS)
				if err != nil {
					return err
				}
				cfg.EtcdEndpoints = info.EtcdEndpoints
			}
			if !noGossip {
				if cfg.Gossip, err = gossip.config(log, cfg.TLS != nil); err != nil {
					return err
				}
			}
			w, err := worker.New(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "worker %s: http %s, model %s, mode %s (loading)\n", cfg.Name, w.HTTPAddr(), cfg.Model, cfg.Mode)
			// A load that fails (a mode that does not fit the model, a checkpoint the engine cannot
			// run) is the worker failing: the process exits with it, since waiting would not fix it.
			return serveUntilDone(cmd, readyFile, map[string]string{"node": cfg.Name, "http": w.HTTPAddr()}, w)
		},
	}
	f := cmd.Flags()
	cf.register(f)
	f.StringVar(&cfg.Name, "node-name", cfg.Name, "node name in the cluster")
	f.StringVar(&cfg.Model, "model", "", "the model's name in the cluster (as imported)")
	f.StringVar(&mode, "mode", string(cfg.Mode), "resident, ondemand, prefetch-all, pregated or speculative")
	f.StringVar(&device, "device", device, deviceFlagUsage)
	f.Var(&cache, "expert-cache", "device memory for experts")
	f.StringVar(&compression, "fetch-compression", "never", "ask stores for compressed experts: never, auto (when it pays on the measured link) or always")
	f.IntVar(&cfg.Staging, "staging-buffers", cfg.Staging, "pinned staging buffers: expert fetches in flight at once")
	f.StringVar(&cfg.HTTPAddr, "http", cfg.HTTPAddr, "HTTP listen address")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the dense weights downloaded from the stores")
	f.IntVar(&cfg.Threads, "threads", 0, "compute threads (0: all cores)")
	f.Var((*priorityFlag)(&cfg.ComputePriority), "compute-priority", computePriorityUsage)
	registerSchedulerFlags(f, &cfg)
	f.StringVar(&apiKeyFile, "api-key-file", "", "file of API keys, one per line: the OpenAI API then requires Authorization: Bearer <key> (401 without)")
	f.StringVar(&cfg.MetricsAddr, "metrics-listen", "", "serve /metrics on this address instead of --http (a port scrapers reach and clients do not)")
	f.DurationVar(&cfg.EtcdGiveUp, "etcd-give-up", cfg.EtcdGiveUp, "while loading, how long etcd may stay unreachable before the worker exits (non-zero); a loaded worker serves without it")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "on SIGTERM, how long requests in flight may run to their end (/ready answers 503 and new ones are refused meanwhile)")
	gossip.register(f)
	tlsf.register(f)
	f.BoolVar(&noGossip, "no-gossip", false, "do not join the gossip cluster (etcd alone)")
	f.StringVar(&readyFile, "ready-file", "", "write {\"http\":…} here once listening")
	f.StringVar(&lv, "log-level", "info", "debug, info, warn or error")
	return cmd
}

const computePriorityUsage = "priority of the compute threads over the fetch path's on shared cores: normal, medium or high (nice 0, -5, -10, as llama.cpp's --prio); above normal needs CAP_SYS_NICE and --threads below the core count, else the worker logs why and uses normal"

// priorityFlag is a compute.Priority as a flag.
type priorityFlag compute.Priority

func (p *priorityFlag) String() string { return compute.Priority(*p).String() }
func (p *priorityFlag) Type() string   { return "priority" }
func (p *priorityFlag) Set(s string) error {
	v, err := compute.ParsePriority(s)
	*p = priorityFlag(v)
	return err
}

// registerSchedulerFlags registers the flags of the worker's scheduler (batching and admission)
// on cfg's fields: `pregate worker` and `pregate up` (for its worker) take the same.
func registerSchedulerFlags(f *pflag.FlagSet, cfg *worker.Config) {
	f.IntVar(&cfg.MaxRunning, "max-running", cfg.MaxRunning, "sequences decoded together")
	f.IntVar(&cfg.MaxBatchedTokens, "max-num-batched-tokens", cfg.MaxBatchedTokens, "tokens one scheduler step runs: a longer prompt is prefilled in chunks between the other requests' decode steps (Mixtral; 0: no bound; else at least --max-running)")
	f.IntVar(&cfg.MaxModelLen, "max-model-len", cfg.MaxModelLen, "bound on prompt plus max_tokens per sequence, 400 beyond (0: Mixtral's max_position_embeddings, 2048 for Switch)")
	f.Var((*byteSize)(&cfg.KVCacheBytes), "kv-cache-bytes", "memory for the running sequences' KV caches: a request is admitted once its worst case (prompt + max_tokens) fits, 400 if it never can (0: no bound)")
	f.BoolVar(&cfg.Preemption, "kv-cache-preemption", cfg.Preemption, "with --kv-cache-bytes, admit a request once its prompt fits and grow its cache as it generates; when the cache is full, the newest running request goes back to the queue and is recomputed later (vLLM's preemption; pregate_num_preemptions_total counts them)")
	f.DurationVar(&cfg.QueueTimeout, "queue-timeout", cfg.QueueTimeout, "how long a request may wait to be admitted before 429 with Retry-After (0: no bound)")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "how long a request may run from its arrival: then it gets 504, or a streamed one an error event after its tokens (0: no bound)")
	f.IntVar(&cfg.MaxWaiting, "max-waiting", cfg.MaxWaiting, "requests queued before answering 429")
}

// clusterFile is <data-dir>/cluster.json, written by `pregate up` so that other tools find the cluster.
type clusterFile struct {
	EtcdEndpoints []string `json:"etcd_endpoints"`
	Coordinator   string   `json:"coordinator"`
	Stores        []string `json:"stores"`
	WorkerHTTP    string   `json:"worker_http"`
	Model         string   `json:"model"`
	Mode          string   `json:"mode"`
	// TLS is an admin certificate for the operator's tools (status, drain), when the cluster
	// runs with TLS: --cluster-file uses it unless --tls-* are given.
	TLS *tlsutil.Files `json:"tls,omitempty"`
}

func newUpCmd() *cobra.Command {
	wc := worker.DefaultConfig() // the scheduler's flags set their fields
	var (
		dir, name, mode, httpAddr, dataDir, lv string
		tokDir, device                         string
		demo, noTLS                            bool
		stores, replicas                       int
		cache                                  = byteSize(1 << 30)
		capacity                               = byteSize(4 << 30)
	)
	cmd := &cobra.Command{
		Use:   "up [--model DIR | --demo]",
		Short: "Run a whole cluster in this process (embedded etcd, coordinator, stores, worker) and serve a model",
		Long: "Run everything on 127.0.0.1: an embedded etcd, a coordinator, --stores stores and a worker (the\n" +
			"stores and their clients under mutual TLS, unless --no-tls); import\n" +
			"the model and serve the OpenAI API on --http until interrupted. --demo synthesises a small\n" +
			"random-weight model (with --tokenizer DIR, that checkpoint's tokenizer: prompts and completions\n" +
			"as text). Where each part listens is printed and written to <data-dir>/cluster.json. The worker's\n" +
			"scheduler takes the flags of `pregate worker` (--max-running, --max-num-batched-tokens,\n" +
			"--max-model-len, --kv-cache-bytes, --kv-cache-preemption, --queue-timeout, --request-timeout,\n" +
			"--max-waiting).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := newLogger(lv)
			if err != nil {
				return err
			}
			m, err := worker.ParseMode(mode)
			if err != nil {
				return err
			}
			spec, err := parseDevice(device)
			if err != nil {
				return err
			}
			if spec.cuda && !cudaBuilt {
				return fmt.Errorf("--device %s: %w", spec, errNoCUDA)
			}
			if (dir == "") == !demo {
				return errors.New("give --model DIR or --demo")
			}
			if tokDir != "" && !demo {
				return errors.New("--tokenizer is for --demo (a --model directory brings its own tokenizer)")
			}
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				return err
			}
			out := cmd.ErrOrStderr()
			if demo {
				dir = filepath.Join(dataDir, "demo-model-"+string(m))
				if err := synthDemo(dir, m, tokDir); err != nil {
					return err
				}
				fmt.Fprintf(out, "demo model (random weights) in %s\n", dir)
			}
			if name == "" {
				name = filepath.Base(filepath.Clean(dir))
			}
			lc, err := cluster.Start(cluster.Config{Dir: dataDir, Stores: stores, Replicas: replicas,
				StoreCapacity: int64(capacity), Persist: true, TLS: !noTLS, Logger: log})
			if err != nil {
				return err
			}
			defer lc.Close()
			if err := lc.WaitStores(ctx, stores); err != nil {
				return err
			}
			importTLS, err := lc.TLS(tlsutil.RoleImporter, "import")
			if err != nil {
				return err
			}
			rep, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: name, Progress: plainProgress(out, name), TLS: importTLS})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "imported %s: %d blobs, %d bytes sent\n", name, rep.Blobs, rep.UploadedBytes)
			wc.Name, wc.EtcdEndpoints, wc.Model, wc.Mode = "worker-0", lc.EtcdEndpoints(), name, m
			wc.ExpertCache, wc.HTTPAddr, wc.DataDir, wc.Logger = int64(cache), httpAddr, filepath.Join(dataDir, "worker"), log
			if err := setWorkerDevice(&wc, spec); err != nil {
				return err
			}
			if wc.TLS, err = lc.TLS(tlsutil.RoleWorker, wc.Name); err != nil {
				return err
			}
			w, err := worker.New(wc)
			if err != nil {
				return err
			}
			defer w.Close()
			if err := w.WaitReady(ctx); err != nil {
				return err
			}
			cf := clusterFile{EtcdEndpoints: lc.EtcdEndpoints(), Coordinator: lc.Coordinator().HTTPAddr(), Stores: lc.StoreAddrs(),
				WorkerHTTP: w.HTTPAddr(), Model: name, Mode: string(m)}
			if admin, err := lc.TLS(tlsutil.RoleAdmin, "admin"); err != nil {
				return err
			} else if admin != nil {
				files := admin.Files()
				cf.TLS = &files
			}
			if err := writeReadyFile(filepath.Join(dataDir, "cluster.json"), cf); err != nil {
				return err
			}
			b, _ := json.MarshalIndent(cf, "", "  ")
			fmt.Fprintf(out, "pregate up: serving %q (%s mode)\n%s\n", name, m, b)
			prompt := "[1,2,3]"
			if w.Tokenizer() != nil {
				prompt = `"Hello, world"`
			}
			fmt.Fprintf(out, "try: curl -s http://%s/v1/completions -H 'Content-Type: application/json' -d '{\"model\":%q,\"prompt\":%s,\"max_tokens\":8,\"return_token_ids\":true}'\n", w.HTTPAddr(), name, prompt)
			fmt.Fprintf(out, "     pregate status --cluster-file %s\n", filepath.Join(dataDir, "cluster.json"))
			<-ctx.Done()
			fmt.Fprintln(out, "pregate up: shutting down")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "checkpoint directory to serve")
	f.BoolVar(&demo, "demo", false, "synthesise a small random-weight model and serve it")
	f.StringVar(&tokDir, "tokenizer", "", "with --demo: give the demo model the tokenizer of this checkpoint directory, so it takes and gives text")
	f.StringVar(&name, "name", "", "the model's name (default: the directory's name)")
	f.IntVar(&stores, "stores", 3, "number of stores")
	f.IntVar(&replicas, "replicas", 2, "replication factor")
	f.StringVar(&mode, "mode", string(worker.ModeSpeculative), "worker mode: resident, ondemand, prefetch-all, pregated or speculative")
	f.IntVar(&wc.Threads, "threads", 0, "the worker's compute threads (0: all cores)")
	f.Var((*priorityFlag)(&wc.ComputePriority), "compute-priority", computePriorityUsage)
	f.StringVar(&httpAddr, "http", "127.0.0.1:8000", "the worker's HTTP address")
	f.StringVar(&dataDir, "data-dir", "pregate-up", "directory for every component's data and cluster.json")
	f.Var(&cache, "expert-cache", "the worker's expert cache")
	f.StringVar(&device, "device", "cpu", "the worker's device: "+deviceFlagUsage)
	f.Var(&capacity, "store-capacity", "each store's memory limit")
	f.StringVar(&lv, "log-level", "warn", "debug, info, warn or error")
	f.BoolVar(&noTLS, "no-tls", false, "plaintext between the stores and their clients (mutual TLS is on by default, certificates in <data-dir>/certs)")
	registerSchedulerFlags(f, &wc)
	return cmd
}

// synthDemo writes the demo model: a small Mixtral, or a small pre-gated Switch for --mode
// pregated (which needs pre-gates). Random weights: the tokens mean nothing. With tok, the model
// gets that checkpoint's tokenizer (and its vocabulary size).
func synthDemo(dir string, m worker.Mode, tok string) error {
	opts := synth.Options{Arch: "mixtral", Preset: "mixtral-tiny", Out: dir, DType: model.F32, Seed: 1,
		Layers: 8, Experts: 8, DModel: 256, DFF: 512, Vocab: 1024}
	if m == worker.ModePregated {
		opts = synth.Options{Arch: "switch", Preset: "switch-tiny", Out: dir, DType: model.F32, Seed: 1,
			Layers: 8, Experts: 8, DModel: 256, DFF: 512, Vocab: 1024, PreGates: true}
	}
	if tok != "" {
		opts.Tokenizer, opts.Vocab = tok, 0
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		if _, err := tokenizer.Files(dir); tok == "" || err == nil {
			return nil // made by an earlier run (with a tokenizer, when one is asked for)
		}
	}
	return synth.Write(opts, nil)
}
