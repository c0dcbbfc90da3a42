package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/internal/modelblobs"
	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
)

// exitError carries a process exit status other than 1 (main prints err unless it is nil).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// clusterFlags are how a client command finds the cluster's etcd: directly, or through a
// coordinator's /v1/cluster.
type clusterFlags struct {
	endpoints   string
	coordinator string
	cluster     string
	file        string
	tls         tlsFlags // registered by withTLS: the client's certificate, for etcd over mutual TLS
}

// registerWithTLS is register plus --tls-ca/--tls-cert/--tls-key, for commands that only read or
// write etcd (with TLS, etcd knows them by their certificate's role: docs/SECURITY.md).
func (c *clusterFlags) registerWithTLS(f *pflag.FlagSet) {
	c.register(f)
	c.tls.register(f)
}

func (c *clusterFlags) register(f *pflag.FlagSet) {
	f.StringVar(&c.endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (env PREGATE_ETCD_ENDPOINTS)")
	f.StringVar(&c.coordinator, "coordinator", "", "coordinators' HTTP addresses, comma-separated, asked for the etcd endpoints (env PREGATE_COORDINATOR)")
	f.StringVar(&c.cluster, "cluster", "default", "cluster name (the etcd prefix /pregate/<cluster>/)")
	f.StringVar(&c.file, "cluster-file", "", "a cluster.json written by `pregate up`, read for the etcd endpoints")
}

// connect returns an etcd client and the cluster's placement store.
func (c *clusterFlags) connect(ctx context.Context) (*clientv3.Client, *placement.Store, error) {
	eps := splitList(c.endpoints)
	if len(eps) == 0 && c.file != "" {
		b, err := os.ReadFile(c.file)
		if err != nil {
			return nil, nil, fmt.Errorf("--cluster-file: %w", err)
		}
		var cf clusterFile
		if err := json.Unmarshal(b, &cf); err != nil {
			return nil, nil, fmt.Errorf("--cluster-file %s: %w", c.file, err)
		}
		eps = cf.EtcdEndpoints
		if cf.TLS != nil && !c.tls.files.Set() {
			c.tls.files = *cf.TLS
		}
	}
	r, err := c.tls.load()
	if err != nil {
		return nil, nil, err
	}
	if len(eps) == 0 && c.coordinator != "" {
		info, err := fetchClusterInfo(ctx, c.coordinator, r)
		if err != nil {
			return nil, nil, err
		}
		eps = info.EtcdEndpoints
		if c.cluster == "default" {
			c.cluster = info.Cluster
		}
	}
	if len(eps) == 0 {
		return nil, nil, errors.New("no cluster given: set --etcd-endpoints (PREGATE_ETCD_ENDPOINTS) or --coordinator (PREGATE_COORDINATOR)")
	}
	cli, err := placement.Dial(eps, r)
	if err != nil {
		return nil, nil, err
	}
	ps := placement.New(cli, c.cluster)
	// clientv3.New does not dial; fail fast and clearly when etcd is not there. A serializable read
	// needs one member, not a quorum: status then tells a lost quorum from an unreachable etcd.
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Get(sctx, ps.Prefix(), clientv3.WithCountOnly(), clientv3.WithSerializable()); err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("etcd at %v: %w", eps, err)
	}
	return cli, ps, nil
}

// writeContext is the context of a command's placement writes: they fail at once, with a clear
// error (writeError), when the etcd member asked has no leader (the cluster lost its quorum),
// instead of waiting for a quorum that may not come back.
func writeContext(ctx context.Context) context.Context { return clientv3.WithRequireLeader(ctx) }

// writeError names a lost quorum in err.
func writeError(err error) error {
	if err != nil && (errors.Is(err, rpctypes.ErrNoLeader) || strings.Contains(err.Error(), rpctypes.ErrNoLeader.Error())) {
		return fmt.Errorf("etcd has no quorum (its members have no leader): placement writes are refused until a majority of members is back: %w", err)
	}
	return err
}

// fetchClusterInfo asks the coordinators in addrs (comma-separated HTTP addresses), one after
// another, for /v1/cluster; the first answer wins.
// fetchClusterInfo asks the coordinators at addrs (the first that answers) for the cluster's etcd
// endpoints: over HTTPS with r's certificate when r is set.
func fetchClusterInfo(ctx context.Context, addrs string, r *tlsutil.Reloader) (coordinator.ClusterInfo, error) {
	var errs []error
	for _, a := range splitList(addrs) {
		info, err := fetchClusterInfoFrom(ctx, a, r)
		if err == nil {
			return info, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return coordinator.ClusterInfo{}, fmt.Errorf("--coordinator %q: no address", addrs)
	}
	return coordinator.ClusterInfo{}, errors.Join(errs...)
}

func fetchClusterInfoFrom(ctx context.Context, addr string, r *tlsutil.Reloader) (coordinator.ClusterInfo, error) {
	var info coordinator.ClusterInfo
	url, client := addr, http.DefaultClient
	if r != nil {
		client = r.HTTPClient(tlsutil.RoleCoordinator)
	}
	if !strings.Contains(url, "://") {
		url = map[bool]string{false: "http://", true: "https://"}[r != nil] + url
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+"/v1/cluster", nil)
	if err != nil {
		return info, fmt.Errorf("--coordinator %q: %w", addr, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return info, fmt.Errorf("coordinator at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return info, fmt.Errorf("coordinator at %s: %s", addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return info, fmt.Errorf("coordinator at %s: bad /v1/cluster answer: %w", addr, err)
	}
	return info, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newCoordinatorCmd() *cobra.Command {
	cfg := coordinator.DefaultConfig()
	var (
		endpoints, readyFile, logLevel string
		gossip                         gossipFlags
		tlsf                           tlsFlags
		maxCapacity                    byteSize
	)
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator: replicated expert placement in etcd, rebalancing as stores come and go",
		Long: "Run a coordinator. With no --etcd-endpoints it starts an embedded etcd member with its data in\n" +
			"--data-dir: a cluster of one, or with --etcd-initial-cluster one of several coordinators' members\n" +
			"(three survive the loss of one). Coordinators elect a leader; the leader alone writes placement.\n" +
			"SIGTERM resigns leadership at once. Every flag falls back to the environment variable PREGATE_<FLAG>.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			cfg.Logger, cfg.AdvertiseHost = log, gossip.advertise
			cfg.EtcdEndpoints = splitList(endpoints)
			cfg.MaxStoreCapacity = int64(maxCapacity)
			if cfg.TLS, err = tlsf.load(); err != nil {
				return err
			}
			if cfg.Gossip, err = gossip.config(log, cfg.TLS != nil); err != nil {
				return err
			}
			co, err := coordinator.New(cfg)
			if err != nil {
				return err
			}
			ready := map[string]any{"node": cfg.Name, "http": co.HTTPAddr(), "gossip": co.GossipAddr(), "etcd_endpoints": co.EtcdEndpoints()}
			fmt.Fprintf(cmd.ErrOrStderr(), "coordinator %s: http %s, gossip %s, etcd %s\n", cfg.Name, co.HTTPAddr(), co.GossipAddr(), strings.Join(co.EtcdEndpoints(), ","))
			return serveUntilDone(cmd, readyFile, ready, co)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "node-name", cfg.Name, "node name in the cluster")
	f.StringVar(&cfg.Cluster, "cluster", "default", "cluster name (the etcd prefix /pregate/<cluster>/)")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (empty: an embedded etcd in --data-dir)")
	f.StringVar(&cfg.EtcdClientURL, "etcd-listen", "http://0.0.0.0:2379", "where the embedded etcd listens for clients (advertised with --advertise-host)")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-listen", "http://0.0.0.0:2380", "where the embedded etcd listens for its peers (advertised with --advertise-host)")
	f.StringVar(&cfg.EtcdInitialCluster, "etcd-initial-cluster", "", "every coordinator's embedded etcd member, name=http://host:2380,… (names are --node-name; empty: a cluster of one)")
	f.StringVar(&cfg.EtcdClusterState, "etcd-initial-cluster-state", "new", "new (the members bootstrap together) or existing (a member added with etcdctl member add)")
	f.StringVar(&cfg.DataDir, "data-dir", "pregate-coordinator", "directory of the embedded etcd's data")
	f.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "replication factor R: every blob on min(R, live stores) stores")
	f.Var(&maxCapacity, "max-store-capacity", "the most capacity any store is taken to have, whatever it reports (e.g. 64GiB; 0: what each reports)")
	f.StringVar(&cfg.HTTPAddr, "http", netaddr.Any(netaddr.CoordinatorHTTPPort), "HTTP address for /health, /ready, /v1/cluster, /v1/status, /metrics")
	f.DurationVar(&cfg.DeadGrace, "dead-grace", cfg.DeadGrace, "how long a store is dead (failed) before its blobs are copied elsewhere")
	f.DurationVar(&cfg.JoinSettle, "join-settle", cfg.JoinSettle, "after a store joins, how long rebalancing waits for more to join (blobs short of replicas are repaired at once)")
	f.DurationVar(&cfg.RestartGrace, "restart-grace", cfg.RestartGrace, "how long a store stopped gracefully (a restart) may stay away before its blobs are copied elsewhere")
	f.DurationVar(&cfg.Interval, "interval", cfg.Interval, "longest time between reconcile passes")
	f.DurationVar(&cfg.EtcdGiveUp, "etcd-give-up", cfg.EtcdGiveUp, "how long an external etcd (--etcd-endpoints) may stay unreachable before the coordinator exits (non-zero) to be restarted")
	f.DurationVar(&cfg.AntiEntropyInterval, "anti-entropy-interval", cfg.AntiEntropyInterval, "how often the leader checks what every store really holds against placement")
	f.DurationVar(&cfg.OrphanGrace, "orphan-grace", cfg.OrphanGrace, "how long a blob no placement names may stay on a store before it is deleted")
	f.IntVar(&cfg.SessionTTL, "leader-ttl", cfg.SessionTTL, "leader lease in seconds")
	f.IntVar(&cfg.CopyParallelism, "copy-parallelism", cfg.CopyParallelism, "blobs copied between stores at once")
	gossip.register(f)
	tlsf.register(f)
	f.StringVar(&readyFile, "ready-file", "", "write {\"http\":…,\"gossip\":…,\"etcd_endpoints\":[…]} here once up")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newImportCmd() *cobra.Command {
	var (
		cf       clusterFlags
		opts     coordinator.ImportOptions
		maxDense byteSize = modelblobs.DefaultMaxDense
		output   string
	)
	cmd := &cobra.Command{
		Use:   "import --model DIR --name NAME",
		Short: "Split a checkpoint into expert and dense blobs, upload them where placement says, publish the model",
		Long: "Import a HuggingFace checkpoint into the cluster. The manifest is published last, so a failed\n" +
			"import leaves no model behind; re-importing the same checkpoint sends nothing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			if opts.Dir == "" || opts.Name == "" {
				return errors.New("--model and --name are required")
			}
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			cli, ps, err := cf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer cli.Close()
			opts.MaxDense = int64(maxDense)
			if opts.TLS, err = cf.tls.load(); err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			var bar *progressbar.ProgressBar
			if isTerminal(stderr) {
				opts.Progress = func(done, total int64) {
					if bar == nil {
						bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(stderr), progressbar.OptionShowBytes(true),
							progressbar.OptionSetDescription("importing "+opts.Name), progressbar.OptionShowCount(),
							progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
					}
					bar.Set64(done) //nolint:errcheck // a progress bar
				}
			} else {
				opts.Progress = plainProgress(stderr, opts.Name)
			}
			rep, err := coordinator.Import(writeContext(cmd.Context()), ps, opts)
			if bar != nil {
				bar.Finish() //nolint:errcheck // a progress bar
				fmt.Fprintln(stderr)
			}
			if err != nil {
				return writeError(err)
			}
			if output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			verb := "published"
			if !rep.Published {
				verb = "already imported, unchanged"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s: %d blobs, %s, R=%d; sent %s in %d uploads, %d blobs already in place (%.1fs)\n",
				rep.Model, verb, rep.Blobs, humanize.IBytes(uint64(rep.Bytes)), rep.Replicas,
				humanize.IBytes(uint64(rep.UploadedBytes)), rep.Uploaded, rep.InPlace, rep.Seconds)
			return nil
		},
	}
	f := cmd.Flags()
	cf.registerWithTLS(f)
	f.StringVar(&opts.Dir, "model", "", "checkpoint directory (config.json + safetensors)")
	f.StringVar(&opts.Name, "name", "", "the model's name in the cluster")
	f.IntVar(&opts.Parallel, "parallel", 4, "blobs uploaded at once")
	f.Var(&maxDense, "max-dense-blob", "largest dense blob")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// plainProgress prints a line at every 10% when stderr is not a terminal.
func plainProgress(w io.Writer, name string) func(done, total int64) {
	last := -1
	return func(done, total int64) {
		pct := 100
		if total > 0 {
			pct = int(done * 100 / total)
		}
		if pct/10 != last/10 || last < 0 {
			last = pct
			fmt.Fprintf(w, "importing %s: %d%% (%s of %s)\n", name, pct, humanize.IBytes(uint64(done)), humanize.IBytes(uint64(total)))
		}
	}
}

func newDrainCmd() *cobra.Command {
	var (
		cf   clusterFlags
		undo bool
	)
	cmd := &cobra.Command{
		Use:   "drain STORE...",
		Short: "Move every blob off the named stores (before stopping them); --undo lets them take blobs again",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			cli, ps, err := cf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer cli.Close()
			if err := ps.SetDrain(writeContext(cmd.Context()), !undo, args...); err != nil {
				return writeError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "draining %s: %v (watch `pregate status` until their BLOBS are 0)\n", strings.Join(args, ", "), !undo)
			return nil
		},
	}
	cf.registerWithTLS(cmd.Flags())
	cmd.Flags().BoolVar(&undo, "undo", false, "clear the drain mark")
	return cmd
}
