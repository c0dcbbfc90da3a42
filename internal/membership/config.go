package membership

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pregate/pregate/internal/netaddr"
)

// Config configures a Member. Start from DefaultConfig; a zero timer or EventBuffer means the
// default below.
type Config struct {
	// NodeName identifies this node in the cluster. Required; must be unique.
	NodeName string

	// BindAddr and BindPort are where gossip listens, TCP and UDP on the same port. BindAddr ""
	// means "0.0.0.0"; BindPort 0 picks a free port (Member.Addr reports it).
	BindAddr string
	BindPort int

	// AdvertiseAddr and AdvertisePort are what other nodes are told to dial. Both optional:
	// AdvertiseAddr "" with BindAddr 0.0.0.0 means the host's first non-loopback address
	// (netaddr.DefaultHost), and AdvertisePort 0 means BindPort.
	AdvertiseAddr string
	AdvertisePort int

	// Join lists seed nodes, host:port (DNS names are resolved at every attempt). Empty is fine
	// (the first node of a cluster); otherwise New fails unless at least one seed answers within
	// JoinRetry.
	Join []string

	// JoinRetry is how long New keeps trying Join (every second) while no seed answers; 0 tries
	// once. Daemons use minutes: the nodes of a cluster being deployed start in any order.
	JoinRetry time.Duration

	// SecretKey turns on gossip encryption (AES-GCM) when set: 16, 24 or 32 bytes. Every node needs
	// the same key; see LoadKey.
	SecretKey []byte

	// KeyFile, when set, turns on gossip encryption with the keys in that file instead of
	// SecretKey (LoadKeys: one per line, the first encrypts, every one decrypts), and the file is
	// read again every KeyReload (0: 5 s), so keys rotate without a restart (docs/SECURITY.md).
	KeyFile   string
	KeyReload time.Duration
	keyring   *memberlist.Keyring // KeyFile's keys, made by New

	// Meta is what this node gossips about itself. Its Role is required.
	Meta Meta

	// Logger receives memberlist's log lines and this package's own, with node=<NodeName>.
	// nil discards them.
	Logger *slog.Logger

	// Failure detection and gossip timers; 0 means memberlist's DefaultLANConfig value (see
	// DefaultConfig). FastTimers sets values for tests on loopback.
	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	GossipInterval   time.Duration
	PushPullInterval time.Duration
	TCPTimeout       time.Duration
	SuspicionMult    int

	// ReconnectInterval is how often the Member tries to join one node it holds dead (a partition
	// that healed; see Member.reconnect). 0 means the default; negative never tries.
	ReconnectInterval time.Duration

	// EventBuffer is the capacity of the Events channel. When it is full the oldest event is
	// dropped and counted (Member.Dropped); memberlist is never blocked.
	EventBuffer int
}

// Defaults. The timer values are memberlist's DefaultLANConfig ones, restated so that a zero field
// has one meaning here.
const (
	defaultBindAddr         = "0.0.0.0"
	defaultBindPort         = 7946
	defaultProbeInterval    = 1 * time.Second        // failure check every second
	defaultProbeTimeout     = 500 * time.Millisecond // reasonable RTT for a LAN
	defaultGossipInterval   = 200 * time.Millisecond // gossip rapidly
	defaultPushPullInterval = 30 * time.Second       // full state sync: low frequency
	defaultTCPTimeout       = 10 * time.Second       // stream connect/read/write (joins, push/pull)
	defaultSuspicionMult    = 4                      // suspect a node for 4 * log(N+1) * ProbeInterval
	defaultEventBuffer      = 256
	defaultReconnect        = 10 * time.Second // a healed partition merges within seconds of it
	defaultKeyReload        = 5 * time.Second
)

// DefaultConfig returns a Config with every default filled in except NodeName, Join, SecretKey,
// Meta and Logger, which are the caller's.
func DefaultConfig() Config {
	return Config{
		BindAddr:          defaultBindAddr, // all interfaces
		BindPort:          defaultBindPort, // memberlist's usual port
		ProbeInterval:     defaultProbeInterval,
		ProbeTimeout:      defaultProbeTimeout,
		GossipInterval:    defaultGossipInterval,
		PushPullInterval:  defaultPushPullInterval,
		TCPTimeout:        defaultTCPTimeout,
		SuspicionMult:     defaultSuspicionMult,
		EventBuffer:       defaultEventBuffer, // events are small; a burst of a few hundred is absorbed
		ReconnectInterval: defaultReconnect,
	}
}

// FastTimers sets timers for tests on loopback: a 3-node cluster declares a killed node dead in well
// under 2 s, meta updates spread in tens of milliseconds. Too aggressive for a real network.
func (c *Config) FastTimers() {
	c.ProbeInterval = 100 * time.Millisecond // probe a node every 100 ms
	c.ProbeTimeout = 50 * time.Millisecond   // loopback RTT is microseconds; leaves room for -race
	c.GossipInterval = 20 * time.Millisecond // spread updates quickly
	c.PushPullInterval = 1 * time.Second     // anti-entropy still runs during a test
	c.TCPTimeout = 1 * time.Second           // loopback streams connect at once or are refused
	c.SuspicionMult = 2                      // suspicion lasts 2 probe intervals (no confirmations wanted)
	// No reconnecting: on loopback a dead node's ephemeral port may be reused by a node of another
	// test's cluster, which a reconnect would merge into this one.
	c.ReconnectInterval = -1
}

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.NodeName == "" {
		return bad("NodeName is required")
	}
	if c.BindAddr != "" && net.ParseIP(c.BindAddr) == nil {
		return bad("BindAddr %q is not an IP address", c.BindAddr)
	}
	if c.BindPort < 0 || c.BindPort > 65535 {
		return bad("BindPort %d out of range", c.BindPort)
	}
	if c.AdvertiseAddr != "" && net.ParseIP(c.AdvertiseAddr) == nil {
		return bad("AdvertiseAddr %q is not an IP address", c.AdvertiseAddr)
	}
	if c.AdvertisePort < 0 || c.AdvertisePort > 65535 {
		return bad("AdvertisePort %d out of range", c.AdvertisePort)
	}
	for _, a := range c.Join {
		if a == "" {
			return bad("empty Join address")
		}
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return bad("SecretKey is %d bytes, want 16, 24 or 32", len(c.SecretKey))
	}
	if !c.Meta.Role.valid() {
		return bad("Meta.Role %q is not %s, %s or %s", c.Meta.Role, RoleStore, RoleWorker, RoleCoordinator)
	}
	if _, err := c.Meta.Encode(); err != nil {
		return bad("Meta: %w", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ProbeInterval", c.ProbeInterval}, {"ProbeTimeout", c.ProbeTimeout}, {"GossipInterval", c.GossipInterval},
		{"PushPullInterval", c.PushPullInterval}, {"TCPTimeout", c.TCPTimeout}} {
		if d.v < 0 {
			return bad("%s %v is negative", d.name, d.v)
		}
	}
	if c.JoinRetry < 0 {
		return bad("JoinRetry %v is negative", c.JoinRetry)
	}
	if c.SuspicionMult < 0 {
		return bad("SuspicionMult %d is negative", c.SuspicionMult)
	}
	if c.EventBuffer < 0 {
		return bad("EventBuffer %d is negative", c.EventBuffer)
	}
	if pi, pt := or(c.ProbeInterval, defaultProbeInterval), or(c.ProbeTimeout, defaultProbeTimeout); pt >= pi {
		return bad("ProbeTimeout %v must be shorter than ProbeInterval %v", pt, pi)
	}
	return nil
}

// or returns v, or def when v is zero.
func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// memberlistConfig translates a validated c into memberlist's config.
func (c Config) memberlistConfig(d *delegate, logger *slog.Logger) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.NodeName
	mc.BindAddr = or(c.BindAddr, defaultBindAddr)
	mc.BindPort = c.BindPort
	mc.AdvertiseAddr = c.AdvertiseAddr
	if mc.AdvertiseAddr == "" && net.ParseIP(mc.BindAddr).IsUnspecified() {
		// memberlist would pick an RFC 1918 address and fail without one (a host on public or
		// benchmark-range addresses): the daemons' one rule instead.
		if h, err := netaddr.DefaultHost(); err == nil {
			mc.AdvertiseAddr = h
		}
	}
	mc.AdvertisePort = or(c.AdvertisePort, c.BindPort) // memberlist overwrites it when BindPort is 0
	if c.keyring != nil {
		mc.Keyring = c.keyring
	} else if len(c.SecretKey) > 0 {
		mc.SecretKey = append([]byte(nil), c.SecretKey...)
	}
	mc.ProbeInterval = or(c.ProbeInterval, defaultProbeInterval)
	mc.ProbeTimeout = or(c.ProbeTimeout, defaultProbeTimeout)
	mc.GossipInterval = or(c.GossipInterval, defaultGossipInterval)
	mc.PushPullInterval = or(c.PushPullInterval, defaultPushPullInterval)
	mc.TCPTimeout = or(c.TCPTimeout, defaultTCPTimeout)
	mc.SuspicionMult = or(c.SuspicionMult, defaultSuspicionMult)
	mc.Delegate = d
	mc.Events = d
	mc.Logger = newMemberlistLogger(logger)
	return mc
}

// ForNode returns a copy of c for the node called name gossiping meta, logging to logger unless c
// has a logger of its own: how a component that was handed the cluster's gossip settings fills
// in its own part.
func (c Config) ForNode(name string, meta Meta, logger *slog.Logger) Config {
	c.NodeName, c.Meta = name, meta
	if c.Logger == nil {
		c.Logger = logger
	}
	return c
}

// Advertise sets AdvertiseAddr to host (an IP, or a DNS name resolved now: memberlist gossips IPs)
// unless AdvertiseAddr is set already or host is "".
func (c *Config) Advertise(host string) error {
	if c.AdvertiseAddr != "" || host == "" {
		return nil
	}
	ip, err := netaddr.ResolveIP(context.Background(), host)
	if err != nil {
		return fmt.Errorf("membership: advertise host: %w", err)
	}
	c.AdvertiseAddr = ip
	return nil
}
