package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/netaddr"
)

// byteSize is a flag holding a byte count written as 8GiB, 512MB or 1073741824.
type byteSize int64

func (b *byteSize) String() string { return humanize.IBytes(uint64(*b)) }
func (b *byteSize) Type() string   { return "bytes" }
func (b *byteSize) Set(s string) error {
	v, err := humanize.ParseBytes(s)
	if err != nil {
		return fmt.Errorf("bad byte size %q: %w", s, err)
	}
	*b = byteSize(v)
	return nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// gossipFlags are the address and memberlist flags every daemon has: --advertise-host,
// --gossip-addr, --join, --join-retry, --gossip-key-file.
type gossipFlags struct {
	advertise, addr, join, keyFile string
	joinRetry                      time.Duration
}

func (g *gossipFlags) register(f *pflag.FlagSet) {
	f.StringVar(&g.advertise, "advertise-host", "", "host (IP or DNS name) other nodes reach this one at, in every address it publishes (default: the first non-loopback address; in Kubernetes, the pod IP)")
	f.StringVar(&g.addr, "gossip-addr", netaddr.Any(netaddr.GossipPort), "memberlist bind address (TCP and UDP)")
	f.StringVar(&g.join, "join", "", "comma-separated gossip addresses (host:port, DNS names allowed) of cluster members to join")
	f.DurationVar(&g.joinRetry, "join-retry", 5*time.Minute, "how long to keep trying --join while no member answers (names are resolved again at every try)")
	f.StringVar(&g.keyFile, "gossip-key-file", "", "file with the gossip encryption keys (one base64 key of 16, 24 or 32 bytes per line, the first used to encrypt; reloaded when it changes; required with TLS)")
}

// config builds the membership configuration the flags describe. With TLS the gossip key is
// required: gossip is how nodes are found, and unencrypted it lets any host on the network join
// the cluster's view and say what it is.
func (g *gossipFlags) config(log *slog.Logger, tlsOn bool) (*membership.Config, error) {
	if tlsOn && g.keyFile == "" {
		return nil, errors.New("--gossip-key-file is required with TLS (make one with `pregate certs gossip-key`)")
	}
	c := membership.DefaultConfig()
	host, port, err := net.SplitHostPort(g.addr)
	if err != nil {
		return nil, fmt.Errorf("--gossip-addr %q: %w", g.addr, err)
	}
	c.BindAddr = host
	if c.BindPort, err = strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("--gossip-addr %q: bad port", g.addr)
	}
	c.Join, c.JoinRetry = splitList(g.join), g.joinRetry
	if err := c.Advertise(g.advertise); err != nil {
		return nil, fmt.Errorf("--advertise-host: %w", err)
	}
	if g.keyFile != "" {
		if _, err := membership.LoadKeys(g.keyFile); err != nil { // a bad file fails at once, named
			return nil, err
		}
		c.KeyFile = g.keyFile // read again while it runs: keys rotate without a restart
	}
	c.Logger = log
	return &c, nil
}

// serveUntilDone writes ready to readyFile (when set), then serves c until the command's context
// ends (SIGINT or SIGTERM: c closes gracefully, exit 0) or c fails (c closes, and the command exits
// non-zero with the reason).
func serveUntilDone(cmd *cobra.Command, readyFile string, ready any, c lifecycle.Component) error {
	if readyFile != "" {
		if err := writeReadyFile(readyFile, ready); err != nil {
			c.Close() //nolint:errcheck // the ready file's error is the one to report
			return fmt.Errorf("--ready-file: %w", err)
		}
	}
	return lifecycle.Serve(cmd.Context(), c)
}

// writeReadyFile writes v as JSON to path (temp file + rename), telling scripts and tests where a
// daemon listens once it does.
func writeReadyFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func newStoreCmd() *cobra.Command {
	cfg := expertstore.DefaultConfig()
	var (
		memLimit    = byteSize(cfg.MemoryLimit)
		maxBlob     = byteSize(cfg.MaxBlobBytes)
		maxInflight = byteSize(cfg.MaxInflightBytes)
		gossip      gossipFlags
		tlsf        tlsFlags
		readyFile   string
		logLevel    string
		noGossip    bool
	)
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Run an expert store: blobs in RAM, persisted on disk, served over gRPC and the data plane",
		Long: "Run an expert store. Every flag falls back to the environment variable PREGATE_<FLAG>\n" +
			"(e.g. --data-dir ← PREGATE_DATA_DIR). SIGTERM or Ctrl-C stops it as for a restart: its blobs\n" +
			"stay placed on it while it comes back with the same name and data dir (nothing is copied).\n" +
			"To remove a store for good: `pregate drain NAME`, wait for its BLOBS to reach 0, then stop it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			if cfg.NodeName == "" {
				if cfg.NodeName, err = os.Hostname(); err != nil {
					return fmt.Errorf("--node-name not set and no hostname: %w", err)
				}
			}
			cfg.MemoryLimit, cfg.MaxBlobBytes, cfg.MaxInflightBytes = int64(memLimit), int64(maxBlob), int64(maxInflight)
			cfg.Logger, cfg.AdvertiseHost = log, gossip.advertise
			if cfg.TLS, err = tlsf.load(); err != nil {
				return err
			}
			if !noGossip {
				if cfg.Gossip, err = gossip.config(log, cfg.TLS != nil); err != nil {
					return err
				}
			}
			s, err := expertstore.New(cfg)
			if err != nil {
				return err
			}
			ready := map[string]string{"node": cfg.NodeName, "grpc": s.Addr(), "data": s.DataAddr(), "http": s.HTTPAddr()}
			if m := s.Member(); m != nil {
				ready["gossip"] = m.Addr()
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "store %s: grpc %s, data plane %s, http %s\n", cfg.NodeName, s.Addr(), s.DataAddr(), s.HTTPAddr())
			return serveUntilDone(cmd, readyFile, ready, s)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", "", "node name in the cluster (default: hostname)")
	f.StringVar(&cfg.ListenAddr, "listen", cfg.ListenAddr, "gRPC listen address")
	f.StringVar(&cfg.DataListenAddr, "data-listen", netaddr.Any(netaddr.StoreDataPort), "data-plane listen address")
	f.StringVar(&cfg.HTTPAddr, "http", netaddr.Any(netaddr.StoreHTTPPort), "HTTP address for /health, /ready and /metrics (empty: none)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory persisting the blobs (empty: memory only)")
	f.Var(&memLimit, "memory-limit", "blob bytes this store holds at most (its capacity)")
	f.Var(&maxBlob, "max-blob", "largest blob a Put may carry")
	f.IntVar(&cfg.ChunkSize, "chunk-size", cfg.ChunkSize, "default chunk size of fetches, 64 KiB to 4 MiB (chunk CRCs are precomputed at this size)")
	f.Var(&maxInflight, "max-inflight", "bytes being sent and received at once; beyond, RESOURCE_EXHAUSTED")
	f.DurationVar(&cfg.PutIdleTimeout, "put-idle-timeout", cfg.PutIdleTimeout, "end a Put stream that sends nothing for this long")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "close a gRPC or data-plane connection with no request for this long")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", cfg.WriteTimeout, "cut a data-plane peer that reads none of a chunk for this long")
	f.IntVar(&cfg.MaxConns, "max-conns", cfg.MaxConns, "connections each of gRPC and the data plane keeps open (0: no cap)")
	f.IntVar(&cfg.MaxConnsPerPeer, "max-conns-per-peer", cfg.MaxConnsPerPeer, "connections from one address each of gRPC and the data plane keeps open (0: no cap)")
	f.IntVar(&cfg.MaxStreams, "max-streams", cfg.MaxStreams, "concurrent gRPC streams per connection (0: gRPC's default)")
	gossip.register(f)
	tlsf.register(f)
	f.BoolVar(&noGossip, "no-gossip", false, "do not join a cluster (a standalone store)")
	f.StringVar(&readyFile, "ready-file", "", "write {\"grpc\":…,\"data\":…,\"http\":…,\"gossip\":…} here once listening")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
