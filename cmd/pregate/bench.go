package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/bench"
	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
	"github.com/pregate/pregate/worker"
)

func newBenchCmd() *cobra.Command {
	var (
		o        bench.ModesOptions
		modes    string
		dtype    string
		output   string
		plotFile string
		lv       string
		device   string
	)
	cmd := &cobra.Command{
		Use:   "bench [--model DIR | --preset switch-base-8] [--regime paper|pcie4|rdma100|tcp25 | --link-gbps X] -o table|json [--plot FILE.png]",
		Short: "The Pre-gated MoE comparison of fetch modes on a cluster in this process (and `bench fetch`)",
		Long: "Run a cluster in this process (stores on gRPC over loopback, a worker), once per mode on the same\n" +
			"prompts, and report per mode: MoE block latency p50/p90, decode tokens/s, stall fraction, bytes\n" +
			"fetched, peak expert bytes, prediction recall; plus the per-block compute c, fetch f and the ideal\n" +
			"bound (c+f)/max(c,f). The store → worker link is paced (--regime or --link-gbps).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			for _, m := range splitList(modes) {
				mode, err := worker.ParseMode(m)
				if err != nil {
					return err
				}
				o.Modes = append(o.Modes, mode)
			}
			spec, err := parseDevice(device)
			if err != nil {
				return err
			}
			wc := worker.DefaultConfig()
			if err := setWorkerDevice(&wc, spec); err != nil {
				return err
			}
			o.Device, o.OpenAccelerator = wc.Device, wc.OpenAccelerator
			dt, err := model.ParseDType(strings.ToUpper(dtype))
			if err != nil {
				return err
			}
			o.DType = dt
			if o.Logger, err = newLogger(lv); err != nil {
				return err
			}
			if o.Dir == "" {
				if o.Dir, err = os.MkdirTemp("", "pregate-bench-"); err != nil {
					return err
				}
				defer os.RemoveAll(o.Dir)
			}
			o.Progress = cmd.ErrOrStderr()
			res, err := bench.RunModes(cmd.Context(), o)
			if err != nil {
				return err
			}
			if plotFile != "" {
				if err := bench.PlotModes(res, plotFile); err != nil {
					return fmt.Errorf("--plot: %w", err)
				}
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			return bench.WriteModesTable(cmd.OutOrStdout(), res)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ModelDir, "model", "", "checkpoint directory (modes that do not fit it are skipped)")
	f.StringVar(&o.Preset, "preset", "", "synthesise this preset (and a twin with random pre-gates for pregated)")
	f.IntVar(&o.Layers, "layers", 0, "preset override: layers")
	f.IntVar(&o.DModel, "d-model", 0, "preset override: d_model / hidden_size")
	f.IntVar(&o.DFF, "d-ff", 0, "preset override: d_ff / intermediate_size")
	f.IntVar(&o.Experts, "experts", 0, "preset override: experts per block")
	f.StringVar(&dtype, "dtype", "f32", "preset dtype: f32 or bf16")
	f.StringVar(&modes, "modes", "resident,ondemand,prefetch-all,pregated,speculative", "modes to run (resident always runs: it measures c)")
	f.IntVar(&o.Stores, "stores", 3, "stores")
	f.IntVar(&o.Tokens, "tokens", 32, "new tokens per sequence")
	f.IntVar(&o.PromptTokens, "prompt-tokens", 16, "prompt tokens per sequence")
	f.IntVar(&o.Batch, "batch", 1, "sequences decoded together")
	f.Float64Var(&o.LinkGbps, "link-gbps", 0, "store → worker link speed in Gb/s, as is (overrides --regime)")
	f.StringVar(&o.Regime, "regime", "", "paper (f ≈ 0.5c), or pcie4, rdma100, tcp25 scaled by this CPU's speed relative to an A100 (default paper)")
	f.IntVar(&o.Threads, "threads", 0, "compute threads (0: all cores)")
	o.ComputePriority = compute.PriorityHigh
	f.Var((*priorityFlag)(&o.ComputePriority), "compute-priority", "the workers' compute threads' priority: normal, medium or high (nice 0, -5, -10); above normal needs CAP_SYS_NICE and --threads below the core count, else normal is used and the output says why. high models a GPU, whose compute the host's fetch work does not slow")
	f.StringVar(&device, "device", "cpu", "the workers' device: "+deviceFlagUsage)
	f.BoolVar(&o.StepAheadBaseline, "step-ahead-baseline", false, "also run pregated without the step-ahead prefetch of each step's first MoE block (row pregated-no-ahead), in the same rounds")
	f.IntVar(&o.Rounds, "rounds", 3, "rounds of the modes, interleaved (resident, ondemand, …, then again); ratios are medians over rounds")
	f.StringVar(&o.Dir, "work-dir", "", "where models and cluster data go (default: a temporary directory, removed after)")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.StringVar(&plotFile, "plot", "", "write a PNG chart of block latency per mode")
	f.StringVar(&lv, "log-level", "error", "debug, info, warn or error")
	cmd.AddCommand(newBenchFetchCmd(), newBenchServeCmd(), newBenchDeviceCmd())
	return cmd
}

func newBenchFetchCmd() *cobra.Command {
	var (
		size    = byteSize(16 << 20)
		count   int
		rounds  int
		chunk   = byteSize(1 << 20)
		output  string
		withTLS bool
	)
	cmd := &cobra.Command{
		Use:   "fetch [--size BYTES] [--count N] -o json",
		Short: "Blob Fetch throughput against a plain TCP copy, between this process and a store process on loopback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want json or table", output)
			}
			if count <= 0 || size <= 0 {
				return fmt.Errorf("--count %d, --size %d: want positive", count, size)
			}
			r, stop, err := spawnStore(cmd.Context(), int64(size)*int64(count)*2, int(chunk), nil)
			if err != nil {
				return err
			}
			defer stop()
			opts := bench.FetchOptions{Size: int64(size), Count: count, Rounds: rounds, MinBytes: 2 << 30}
			if withTLS {
				// A throwaway CA: a second store with mutual TLS, and a client certificate.
				dir, err := os.MkdirTemp("", "pregate-bench-tls-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				storeFiles, clientFiles, err := benchCerts(dir)
				if err != nil {
					return err
				}
				tr, tstop, err := spawnStore(cmd.Context(), int64(size)*int64(count)*2, int(chunk), &storeFiles)
				if err != nil {
					return err
				}
				defer tstop()
				if opts.TLS, err = tlsutil.Load(clientFiles); err != nil {
					return err
				}
				opts.TLSStore = tr
			}
			res, err := bench.RunFetch(cmd.Context(), r, opts)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				return json.NewEncoder(w).Encode(res)
			}
			fmt.Fprintf(w, "METHOD        GB/s   RATIO   CPU s/GB (this process)\n")
			fmt.Fprintf(w, "tcp (raw)   %6.2f   1.00    %.3f\n", res.TCPBytesPerSecond/1e9, res.TCPCPUSecondsPerGB)
			fmt.Fprintf(w, "fetch       %6.2f   %.2f    %.3f\n", res.FetchBytesPerSecond/1e9, res.Ratio, res.FetchCPUSecondsPerGB)
			fmt.Fprintf(w, "fetch grpc  %6.2f   %.2f\n", res.GRPCBytesPerSecond/1e9, res.GRPCRatio)
			if res.TLSBytesPerSecond > 0 {
				fmt.Fprintf(w, "fetch tls   %6.2f   %.2f   (%.2f of the plaintext fetch)\n", res.TLSBytesPerSecond/1e9, res.TLSRatio, res.TLSOverPlaintext)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.Var(&size, "size", "bytes per blob")
	f.IntVar(&count, "count", 8, "blobs")
	f.Var(&chunk, "chunk", "the store's chunk size")
	f.IntVar(&rounds, "rounds", 3, "alternating measurement rounds (best of each is reported)")
	f.BoolVar(&withTLS, "tls", false, "also fetch over mutual TLS, from a second store started with TLS")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// benchCerts makes a CA in dir and issues a store certificate for 127.0.0.1 and an importer one for
// the benchmark's client.
func benchCerts(dir string) (store, client tlsutil.Files, err error) {
	caCert, caKey, err := tlsutil.NewCA("bench", time.Hour)
	if err != nil {
		return store, client, err
	}
	write := func(role, name string) (tlsutil.Files, error) {
		return tlsutil.IssueFiles(dir, caCert, caKey, tlsutil.Identity{Role: role, Name: name}, []string{"127.0.0.1", "localhost"}, time.Hour)
	}
	if store, err = write(tlsutil.RoleStore, "bench-store"); err != nil {
		return store, client, err
	}
	client, err = write(tlsutil.RoleImporter, "bench") // it Puts the blobs it then fetches
	return store, client, err
}

// spawnStore starts `pregate store` as a child process on loopback (memory only, no gossip, with
// mutual TLS when tlsFiles is set) and waits for its ready file.
func spawnStore(ctx context.Context, memory int64, chunk int, tlsFiles *tlsutil.Files) (routing.Replica, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return routing.Replica{}, nil, err
	}
	dir, err := os.MkdirTemp("", "pregate-bench-")
	if err != nil {
		return routing.Replica{}, nil, err
	}
	ready := filepath.Join(dir, "ready.json")
	child := exec.Command(exe, "store", "--no-gossip", "--node-name", "bench-store", "--listen", "127.0.0.1:0",
		"--data-listen", "127.0.0.1:0", "--http", "", "--memory-limit", fmt.Sprint(memory), "--max-blob", fmt.Sprint(memory), "--max-inflight", fmt.Sprint(memory),
		"--chunk-size", fmt.Sprint(chunk), "--ready-file", ready, "--log-level", "warn")
	if tlsFiles != nil {
		child.Args = append(child.Args, "--tls-ca", tlsFiles.CA, "--tls-cert", tlsFiles.Cert, "--tls-key", tlsFiles.Key)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		os.RemoveAll(dir)
		return routing.Replica{}, nil, err
	}
	stop := func() {
		child.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { child.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			child.Process.Kill()
			<-done
		}
		os.RemoveAll(dir)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var addrs map[string]string
			if err := json.Unmarshal(b, &addrs); err != nil {
				stop()
				return routing.Replica{}, nil, fmt.Errorf("store ready file: %w", err)
			}
			return routing.Replica{Store: addrs["node"], GRPCAddr: addrs["grpc"], DataAddr: addrs["data"]}, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return routing.Replica{}, nil, fmt.Errorf("store process did not become ready within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newBenchServeCmd is `pregate bench serve`: vLLM's serving benchmark against a running worker.
func newBenchServeCmd() *cobra.Command {
	var (
		o                            bench.ServeOptions
		concurrency                  []int
		output, apiKeyFile, urlValue string
	)
	cmd := &cobra.Command{
		Use:   "serve --url http://worker:8000 --model NAME [--concurrency 1,8,32] [--rate R] -o table|json",
		Short: "Replay streamed completions against a running worker: TTFT, ITL, output tokens/s, requests/s",
		Long: "Replay --requests streamed completions (random prompts of --prompt-len token ids, --max-tokens\n" +
			"each, ignore_eos) against a worker's OpenAI API at each --concurrency (and --rate requests per\n" +
			"second, Poisson arrivals; 0: as fast as the concurrency allows), as vLLM's serving benchmark\n" +
			"does, and print time to first token and inter-token latency (p50, p99), end-to-end latency,\n" +
			"output tokens/s and requests/s for each.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want json or table", output)
			}
			if urlValue == "" || o.Model == "" {
				return errors.New("--url and --model are required")
			}
			o.URL = urlValue
			if !strings.Contains(o.URL, "://") {
				o.URL = "http://" + o.URL
			}
			if apiKeyFile != "" {
				keys, err := worker.LoadAPIKeys(apiKeyFile)
				if err != nil {
					return fmt.Errorf("--api-key-file: %w", err)
				}
				o.APIKey = keys[0]
			}
			var results []bench.ServeResult
			for _, c := range concurrency {
				o.Concurrency = c
				r, err := bench.RunServe(cmd.Context(), o)
				if err != nil {
					return err
				}
				results = append(results, r)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				return json.NewEncoder(w).Encode(results)
			}
			fmt.Fprintf(w, "CONC  REQS  FAILED  REQ/S   OUT TOK/S  TTFT p50/p99 ms   ITL p50/p99 ms   E2E p50/p99 ms\n")
			for _, r := range results {
				fmt.Fprintf(w, "%4d  %4d  %6d  %5.2f  %10.1f  %7.1f/%-7.1f  %6.1f/%-7.1f  %7.0f/%-7.0f\n", r.Concurrency, r.Requests, r.Failed,
					r.RequestsPerSecond, r.OutputTokensPerSecond, r.TTFT.P50, r.TTFT.P99, r.ITL.P50, r.ITL.P99, r.E2E.P50, r.E2E.P99)
			}
			for _, r := range results {
				for _, e := range r.Errors {
					fmt.Fprintf(w, "concurrency %d: %s\n", r.Concurrency, e)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&urlValue, "url", "", "the worker's base URL (http://host:8000)")
	f.StringVar(&o.Model, "model", "", "the model's name")
	f.IntSliceVar(&concurrency, "concurrency", []int{1, 8, 32}, "requests in flight at most; one run per value")
	f.Float64Var(&o.Rate, "rate", 0, "requests started per second (Poisson arrivals); 0: as fast as the concurrency allows")
	f.IntVar(&o.Requests, "requests", 64, "requests per run")
	f.IntVar(&o.PromptLen, "prompt-len", 32, "prompt tokens (random ids)")
	f.IntVar(&o.MaxTokens, "max-tokens", 32, "tokens generated per request (ignore_eos)")
	f.IntVar(&o.Vocab, "vocab", 256, "prompt ids are drawn from [1, vocab)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the prompts")
	f.StringVar(&apiKeyFile, "api-key-file", "", "file whose first key is sent as Authorization: Bearer")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
