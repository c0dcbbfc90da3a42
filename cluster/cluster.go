// Package cluster embeds a whole pregate cluster in one process, as etcd's embed package embeds an
// etcd: an etcd, coordinators and N stores on 127.0.0.1, each on its own free ports with real gRPC,
// real memberlist and real files. `pregate up` serves from one (adding a worker), `pregate bench`
// measures on one, and the cluster tests drive one: adding, draining, killing and restarting
// stores, restarting coordinators. It is an assembly of the daemons, above them all; no daemon
// imports it.
package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/internal/embedetcd"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
)

// Config configures a local cluster.
type Config struct {
	// Dir holds every component's data (etcd/, stores/<name>/).
	Dir string
	// Stores is the number of stores started with the cluster, named store-0, store-1, ….
	Stores int
	// StoreCapacity is each store's memory limit (default 1 GiB).
	StoreCapacity int64
	// Replicas is the replication factor (default 2).
	Replicas int
	// Fast sets test timers: fast gossip failure detection, 100 ms reconcile interval, 2 s leader
	// lease, no grace before a dead store's blobs are re-replicated, inventories every 300 ms and a
	// 2 s grace for unreferenced blobs.
	Fast bool
	// Persist keeps store blobs on disk under Dir (otherwise in RAM only).
	Persist bool
	// TLS turns on mutual TLS between the stores and their clients: a CA in Dir/certs, a
	// certificate per node (Local.TLS gives one to a worker or an importer).
	TLS bool
	// Coordinator, when set, adjusts every coordinator's configuration last.
	Coordinator func(*coordinator.Config)
	// Logger receives every component's logs; nil discards them.
	Logger *slog.Logger
}

// Local is a running local cluster.
type Local struct {
	cfg    Config
	etcd   *embedetcd.Server
	cli    *clientv3.Client // the cluster's own, outliving any coordinator
	ps     *placement.Store
	mu     sync.Mutex
	coords []*coordinator.Coordinator
	stores map[string]*expertstore.Server
	ports  map[string]storePorts // each store's ports, kept across restarts
	seeds  []string              // gossip addresses to join
	next   int                   // the next store number

	ca        *tlsutil.Authority // with Config.TLS
	gossipKey []byte             // with Config.TLS
}

// Start starts etcd, the coordinator and cfg.Stores stores. On an error everything started is
// stopped.
func Start(cfg Config) (c *Local, err error) {
	if cfg.Dir == "" {
		return nil, errors.New("cluster: no directory")
	}
	cfg.StoreCapacity = cmp.Or(cfg.StoreCapacity, 1<<30)
	cfg.Replicas = cmp.Or(cfg.Replicas, 2)
	c = &Local{cfg: cfg, stores: map[string]*expertstore.Server{}, ports: map[string]storePorts{}}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if cfg.TLS {
		if c.ca, err = tlsutil.NewAuthority(filepath.Join(cfg.Dir, "certs"), "local", 10*365*24*time.Hour); err != nil {
			return nil, err
		}
		c.gossipKey = make([]byte, 32) // with TLS, gossip is encrypted too (docs/SECURITY.md)
		if _, err = rand.Read(c.gossipKey); err != nil {
			return nil, err
		}
	}
	ec := embedetcd.DefaultConfig()
	ec.Dir = filepath.Join(cfg.Dir, "etcd")
	ec.ClientURL, ec.PeerURL = "", ""
	ec.Logger = cfg.Logger
	ec.UnsafeNoFsync = cfg.Fast
	var own *tlsutil.Reloader // the cluster's own etcd client: root, like a coordinator
	if cfg.TLS {
		etcdTLS, err := c.TLS(tlsutil.RoleCoordinator, "etcd")
		if err != nil {
			return nil, err
		}
		ec.TLS = etcdTLS.Files()
		if own, err = c.TLS(tlsutil.RoleCoordinator, "local"); err != nil {
			return nil, err
		}
	}
	if c.etcd, err = embedetcd.Start(ec); err != nil {
		return nil, err
	}
	if c.cli, err = placement.Dial(c.etcd.Endpoints(), own); err != nil {
		return nil, err
	}
	c.ps = placement.New(c.cli, "")
	if _, err = c.StartCoordinator(); err != nil {
		return nil, err
	}
	for range cfg.Stores {
		if _, err = c.AddStore(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// TLS returns the mutual TLS of a node named name with role (a certificate issued now, in
// Dir/certs), nil without Config.TLS.
func (c *Local) TLS(role, name string) (*tlsutil.Reloader, error) {
	if c.ca == nil {
		return nil, nil
	}
	return c.ca.Node(tlsutil.Identity{Role: role, Name: name}, []string{"127.0.0.1", "localhost"}, 365*24*time.Hour)
}

// GossipConfig is the gossip configuration of a new node of the cluster (loopback, the cluster's
// seeds and, with TLS, its gossip key).
func (c *Local) GossipConfig() *membership.Config { return c.gossip() }

func (c *Local) gossip() *membership.Config {
	g := membership.DefaultConfig()
	g.BindAddr, g.BindPort = "127.0.0.1", 0
	if c.cfg.Fast {
		g.FastTimers()
	}
	c.mu.Lock()
	g.Join = slices.Clone(c.seeds)
	c.mu.Unlock()
	g.Logger = c.cfg.Logger
	g.SecretKey = c.gossipKey
	return &g
}

func (c *Local) addSeed(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seeds = append(c.seeds, addr)
}

// StartCoordinator starts another coordinator (named coord-<n>) on the cluster's etcd.
func (c *Local) StartCoordinator() (*coordinator.Coordinator, error) {
	return c.StartCoordinatorWith(nil)
}

// StartCoordinatorWith is StartCoordinator with adjust applied to the configuration last.
func (c *Local) StartCoordinatorWith(adjust func(*coordinator.Config)) (*coordinator.Coordinator, error) {
	cc := coordinator.DefaultConfig()
	c.mu.Lock()
	cc.Name = fmt.Sprintf("coord-%d", len(c.coords))
	c.mu.Unlock()
	cc.EtcdEndpoints = c.etcd.Endpoints()
	cc.Replicas = c.cfg.Replicas
	cc.HTTPAddr = "127.0.0.1:0"
	cc.Gossip = c.gossip()
	cc.Logger = c.cfg.Logger
	if c.cfg.Fast {
		cc.Interval = 100 * time.Millisecond
		cc.SessionTTL = 2
		cc.DeadGrace = 0
		cc.JoinSettle = 0
		cc.CopyTimeout = 20 * time.Second
		cc.AntiEntropyInterval = 300 * time.Millisecond
		cc.OrphanGrace = 2 * time.Second
	}
	if c.cfg.Coordinator != nil {
		c.cfg.Coordinator(&cc)
	}
	if adjust != nil {
		adjust(&cc)
	}
	if cc.TLS == nil {
		var err error
		if cc.TLS, err = c.TLS(tlsutil.RoleCoordinator, cc.Name); err != nil {
			return nil, err
		}
	}
	co, err := coordinator.New(cc)
	if err != nil {
		return nil, err
	}
	c.addSeed(co.GossipAddr())
	c.mu.Lock()
	c.coords = append(c.coords, co)
	c.mu.Unlock()
	return co, nil
}

// Coordinator returns the newest running coordinator (nil if none).
func (c *Local) Coordinator() *coordinator.Coordinator {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.coords) - 1; i >= 0; i-- {
		if c.coords[i] != nil {
			return c.coords[i]
		}
	}
	return nil
}

// Coordinators returns the running coordinators, oldest first.
func (c *Local) Coordinators() []*coordinator.Coordinator {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*coordinator.Coordinator
	for _, co := range c.coords {
		if co != nil {
			out = append(out, co)
		}
	}
	return out
}

// StopCoordinator closes co (it resigns; another running coordinator takes over).
func (c *Local) StopCoordinator(co *coordinator.Coordinator) {
	c.mu.Lock()
	for i := range c.coords {
		if c.coords[i] == co {
			c.coords[i] = nil
		}
	}
	c.mu.Unlock()
	co.Close()
}

// AddStore starts a new store (store-<n>) that joins the cluster's gossip.
func (c *Local) AddStore() (*expertstore.Server, error) {
	c.mu.Lock()
	name := fmt.Sprintf("store-%d", c.next)
	c.next++
	c.mu.Unlock()
	return c.StartStore(name)
}

// StoreDir returns the data dir of the store called name ("" without Persist).
func (c *Local) StoreDir(name string) string {
	if !c.cfg.Persist {
		return ""
	}
	return filepath.Join(c.cfg.Dir, "stores", name)
}

// storePorts are a store's gRPC, data-plane and gossip ports.
type storePorts struct{ grpc, data, gossip string }

// StartStore starts the store called name, which joins the cluster's gossip: a store stopped
// before comes back on the same ports with what its data dir holds (with Persist), as a restarted
// process would.
func (c *Local) StartStore(name string) (*expertstore.Server, error) {
	if c.Store(name) != nil {
		return nil, fmt.Errorf("cluster: store %q is running", name)
	}
	c.mu.Lock()
	ports, restart := c.ports[name]
	c.mu.Unlock()
	sc := expertstore.DefaultConfig()
	sc.NodeName = name
	sc.ListenAddr = "127.0.0.1:0"
	sc.Gossip = c.gossip()
	if restart {
		sc.ListenAddr, sc.DataListenAddr = "127.0.0.1:"+ports.grpc, "127.0.0.1:"+ports.data
		sc.Gossip.BindPort, _ = strconv.Atoi(ports.gossip)
	}
	if sc.DataDir = c.StoreDir(name); sc.DataDir != "" {
		if err := os.MkdirAll(sc.DataDir, 0o755); err != nil {
			return nil, err
		}
	}
	sc.MemoryLimit = c.cfg.StoreCapacity
	sc.MaxBlobBytes = min(sc.MaxBlobBytes, c.cfg.StoreCapacity)
	sc.Logger = c.cfg.Logger
	var err error
	if sc.TLS, err = c.TLS(tlsutil.RoleStore, name); err != nil {
		return nil, err
	}
	s, err := expertstore.New(sc)
	if err != nil {
		return nil, err
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	c.mu.Lock()
	c.stores[name] = s
	c.ports[name] = storePorts{grpc: port(s.Addr()), data: port(s.DataAddr()), gossip: port(s.Member().Addr())}
	c.mu.Unlock()
	if !restart {
		c.addSeed(s.Member().Addr())
	}
	return s, nil
}

// Store returns the running store called name, or nil.
func (c *Local) Store(name string) *expertstore.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[name]
}

// StoreNames returns the running stores' names, sorted.
func (c *Local) StoreNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.stores {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// StoreAddrs returns the running stores' gRPC addresses, in StoreNames order.
func (c *Local) StoreAddrs() []string {
	var out []string
	for _, n := range c.StoreNames() {
		if s := c.Store(n); s != nil {
			out = append(out, s.Addr())
		}
	}
	return out
}

// StopStore stops a store gracefully (it leaves the gossip cluster).
func (c *Local) StopStore(name string) error { return c.removeStore(name, true) }

// KillStore stops a store as a crash would: no leave, connections cut; gossip declares it dead.
func (c *Local) KillStore(name string) error { return c.removeStore(name, false) }

func (c *Local) removeStore(name string, graceful bool) error {
	c.mu.Lock()
	s := c.stores[name]
	delete(c.stores, name)
	c.mu.Unlock()
	if s == nil {
		return fmt.Errorf("cluster: no running store %q", name)
	}
	if graceful {
		return s.Close()
	}
	s.Stop()
	return nil
}

// EtcdEndpoints returns the embedded etcd's client URLs.
func (c *Local) EtcdEndpoints() []string { return c.etcd.Endpoints() }

// Placement returns the cluster's state in etcd, over the cluster's own client.
func (c *Local) Placement() *placement.Store { return c.ps }

// Etcd returns the cluster's own etcd client.
func (c *Local) Etcd() *clientv3.Client { return c.cli }

// Close stops everything: coordinators (so that nothing reacts to the stores going), stores,
// etcd. The stores stop without a gossip leave: with the whole cluster going there is no one to
// tell, and the last member to leave would wait seconds for an acknowledgement. Their blobs are
// already on disk.
func (c *Local) Close() error {
	for _, co := range c.Coordinators() {
		c.StopCoordinator(co)
	}
	for _, n := range c.StoreNames() {
		c.KillStore(n) //nolint:errcheck // shutting down
	}
	if c.cli != nil {
		c.cli.Close()
	}
	if c.etcd != nil {
		return c.etcd.Close()
	}
	return nil
}

// WaitStores waits until the coordinator has published n alive stores: the importer places blobs
// over the stores the records name, so an import must wait for them.
func (c *Local) WaitStores(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		st, err := coordinator.ReadStatus(ctx, c.cli, c.ps, c.cfg.Replicas)
		if err == nil && st.Summary.StoresAlive >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %d stores did not come up: %w", n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
