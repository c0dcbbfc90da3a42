package embedetcd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pregate/pregate/internal/tlsutil"
)

// Sentinel errors.
var (
	// ErrInvalidConfig wraps every Validate failure.
	ErrInvalidConfig = errors.New("embedetcd: invalid config")
	// ErrStart is returned (wrapped) when the server does not become ready.
	ErrStart = errors.New("embedetcd: start failed")
)

// Config configures an embedded etcd member: a cluster of one by default, or one member of a
// cluster of several (InitialCluster). Start from DefaultConfig; a zero field means the default
// below.
type Config struct {
	// Name is the member's name. Default "pregate".
	Name string

	// Dir holds the member's data (WAL and snapshots, in Dir/member). Required. Starting on a Dir
	// that already holds a member restarts it with its data; otherwise a new cluster is created.
	Dir string

	// ClientURL is where the member listens for clients, http://host:port with host an IP address.
	// "" or port 0 picks a free port on 127.0.0.1 (Server.Endpoints reports it).
	ClientURL string

	// PeerURL is where the member listens for raft peers; same rule as ClientURL. A single-member
	// cluster sends nothing over it, but etcd requires one.
	PeerURL string

	// AdvertiseHost replaces the host of ClientURL and PeerURL in the URLs the member advertises
	// (to clients, in the member list, to its peers): an IP or a DNS name. "" advertises the listen
	// URLs, with a wildcard host replaced by the host's first non-loopback address.
	AdvertiseHost string

	// InitialCluster lists every member of a new cluster as name=peerURL, comma-separated (etcd's
	// --initial-cluster), this one included under Name. "" is a cluster of this member alone.
	// Ignored when Dir already holds the member's data (a restart).
	InitialCluster string

	// ClusterState is "new" (the members of InitialCluster bootstrap together; default) or
	// "existing" (a member added to a running cluster with etcdctl member add first).
	ClusterState string

	// Logger receives etcd's own error-level log lines (its info and warn lines are very noisy and
	// are dropped), with component=etcd. nil discards them.
	Logger *slog.Logger

	// StartTimeout bounds how long Start waits for the member to be ready to serve. Default 30 s.
	StartTimeout time.Duration

	// CompactionRetention is how much key history etcd keeps (periodic auto-compaction); watches
	// cannot start further back than this. Default 1 h; negative never compacts.
	CompactionRetention time.Duration

	// TLS, when set, serves clients and peers over mutual TLS with these files (the cluster's CA
	// and this coordinator's certificate, read again at each handshake): the URLs become https,
	// clients must present a certificate of the CA, and peers a coordinator's (CommonName
	// "coordinator", package tlsutil's scheme). The etcd users are the certificates' CommonNames:
	// see EnableAuth.
	TLS tlsutil.Files

	// UnsafeNoFsync turns off fsync: a crash can lose or corrupt data. For tests only, where it
	// saves most of a write's latency.
	UnsafeNoFsync bool
}

// Defaults.
const (
	defaultName                = "pregate"
	defaultClientURL           = "http://127.0.0.1:2379" // etcd's usual client port, loopback only
	defaultPeerURL             = "http://127.0.0.1:2380" // etcd's usual peer port, loopback only
	defaultStartTimeout        = 30 * time.Second        // a new member is ready in well under a second; a restart replays its WAL
	defaultCompactionRetention = time.Hour               // bounds history growth; watchers re-list after a compaction
)

// DefaultConfig returns a Config with every default filled in except Dir and Logger, which are the
// caller's. Tests set ClientURL and PeerURL to "" for free ports.
func DefaultConfig() Config {
	return Config{
		Name:                defaultName,
		ClientURL:           defaultClientURL,
		PeerURL:             defaultPeerURL,
		StartTimeout:        defaultStartTimeout,
		CompactionRetention: defaultCompactionRetention,
	}
}

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.Dir == "" {
		return bad("Dir is required")
	}
	for _, u := range []struct{ name, v string }{{"ClientURL", c.ClientURL}, {"PeerURL", c.PeerURL}} {
		if u.v == "" {
			continue
		}
		if _, err := parseURL(u.v); err != nil {
			return bad("%s: %v", u.name, err)
		}
	}
	switch c.ClusterState {
	case "", "new", "existing":
	default:
		return bad("ClusterState %q: want new or existing", c.ClusterState)
	}
	if c.InitialCluster != "" {
		if _, err := ParseInitialCluster(c.InitialCluster); err != nil {
			return bad("InitialCluster: %v", err)
		}
	}
	if c.StartTimeout < 0 {
		return bad("StartTimeout %v is negative", c.StartTimeout)
	}
	return nil
}

// parseURL parses an http://ip:port URL; the port may be 0.
func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%q: scheme must be http (with TLS the member serves https on it)", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("%q: want http://ip:port only", s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", s, err)
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("%q: host must be an IP address", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("%q: bad port", s)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// or returns v, or def when v is zero.
func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// ParseInitialCluster parses name=http://host:port,… (etcd's --initial-cluster) into name → URL,
// naming what is wrong.
func ParseInitialCluster(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" || raw == "" {
			return nil, fmt.Errorf("%q: want name=http://host:port", part)
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("%q: want name=http://host:port", part)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("member %q named twice", name)
		}
		out[name] = raw
	}
	return out, nil
}
