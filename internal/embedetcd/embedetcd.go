// Package embedetcd runs an etcd member inside the process: the coordinator's default when it is
// given no etcd endpoints (its data in the coordinator's data dir), alone or as one of several
// coordinators' members of one etcd cluster (Config.InitialCluster), and the real etcd that
// cluster tests run against.
//
//	Start(cfg) ──▶ embed.StartEtcd ──▶ wait until ready (or its error, or StartTimeout)
//	Endpoints() ──▶ clientv3.New(...)           Close() ──▶ stop serving, stop raft, wait
//
// Starting again on the same Dir restarts the member with its data.
package embedetcd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/pregate/pregate/internal/netaddr"
	"github.com/pregate/pregate/internal/tlsutil"
)

// startAttempts bounds the retries when a free port picked for a URL is taken before etcd binds it.
const startAttempts = 3

// Server is a running embedded etcd member.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	closeOnce sync.Once
	closing   *atomic.Bool // set by Close: etcd's errors from then on are expected
}

// Start starts the member and waits until it serves clients. On any failure it stops whatever it
// started before returning.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Name = or(cfg.Name, defaultName)
	cfg.StartTimeout = or(cfg.StartTimeout, defaultStartTimeout)
	cfg.CompactionRetention = or(cfg.CompactionRetention, defaultCompactionRetention)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "etcd", "member", cfg.Name)

	for attempt := 1; ; attempt++ {
		client, pickedClient, err := resolveURL(cfg.ClientURL)
		if err != nil {
			return nil, fmt.Errorf("%w: client URL: %w", ErrStart, err)
		}
		peer, pickedPeer, err := resolveURL(cfg.PeerURL)
		if err != nil {
			return nil, fmt.Errorf("%w: peer URL: %w", ErrStart, err)
		}
		s, err := start(cfg, client, peer, logger)
		if err == nil {
			return s, nil
		}
		// Another process may take a port between our probe and etcd's bind: pick again.
		if (pickedClient || pickedPeer) && attempt < startAttempts && errors.Is(err, syscall.EADDRINUSE) {
			logger.Warn("picked port was taken; retrying", "err", err)
			continue
		}
		return nil, err
	}
}

func start(cfg Config, client, peer *url.URL, logger *slog.Logger) (*Server, error) {
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	advClient, err := advertised(client, cfg.AdvertiseHost)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	advPeer, err := advertised(peer, cfg.AdvertiseHost)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if cfg.TLS.Set() {
		for _, u := range []*url.URL{client, peer, advClient, advPeer} {
			u.Scheme = "https"
		}
		ec.ClientTLSInfo = transport.TLSInfo{CertFile: cfg.TLS.Cert, KeyFile: cfg.TLS.Key, TrustedCAFile: cfg.TLS.CA,
			ClientCertAuth: true, MinVersion: tls.VersionTLS13}
		ec.PeerTLSInfo = ec.ClientTLSInfo
		ec.PeerTLSInfo.AllowedCNs = []string{tlsutil.RoleCoordinator} // raft traffic from coordinators only
		cfg.InitialCluster = strings.ReplaceAll(cfg.InitialCluster, "=http://", "=https://")
	}
	ec.ListenClientUrls = []url.URL{*client}
	ec.AdvertiseClientUrls = []url.URL{*advClient}
	ec.ListenPeerUrls = []url.URL{*peer}
	ec.AdvertisePeerUrls = []url.URL{*advPeer}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name) // a cluster of one; ignored on restart
	if cfg.InitialCluster != "" {
		ec.InitialCluster = cfg.InitialCluster
	}
	ec.ClusterState = embed.ClusterStateFlagNew
	if cfg.ClusterState == "existing" {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	ec.InitialClusterToken = "pregate"
	// A member of several: a peer that is down is the normal case while they start one by one.
	ec.StrictReconfigCheck = true
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	if cfg.CompactionRetention > 0 {
		ec.AutoCompactionMode = embed.CompactorModePeriodic
		ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	}
	closing := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLogger(logger, closing))

	e, err := embed.StartEtcd(ec)
	if err != nil { // StartEtcd has closed what it started
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	case <-e.Server.StopNotify():
		e.Close()
		return nil, fmt.Errorf("%w: server stopped before it was ready", ErrStart)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("%w: not ready after %v", ErrStart, cfg.StartTimeout)
	}
	s := &Server{etcd: e, closing: closing, endpoints: []string{advClient.String()}}
	logger.Info("embedded etcd ready", "endpoints", s.endpoints, "dir", cfg.Dir)
	return s, nil
}

// resolveURL returns raw as a URL, with a free port on its host when its port is 0 ("" means
// http://127.0.0.1:0); picked says a port was chosen here.
func resolveURL(raw string) (*url.URL, bool, error) {
	u, err := parseURL(or(raw, "http://127.0.0.1:0"))
	if err != nil {
		return nil, false, err
	}
	host, port, _ := net.SplitHostPort(u.Host) // parseURL checked it
	if port != "0" {
		return u, false, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, false, err
	}
	p := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return nil, false, err
	}
	u.Host = net.JoinHostPort(host, strconv.Itoa(p))
	return u, true, nil
}

// advertised returns the URL to advertise for listen URL u: its host replaced by host, or, when
// host is "" and u's host is a wildcard, by the host's first non-loopback address.
func advertised(u *url.URL, host string) (*url.URL, error) {
	pub, err := netaddr.Publish(u.Host, host)
	if err != nil {
		return nil, err
	}
	return &url.URL{Scheme: u.Scheme, Host: pub}, nil
}

// Endpoints returns the client URL this member advertises, for clientv3.Config.Endpoints.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Err reports errors from etcd's serving goroutines while it runs; it is closed once Close has
// stopped them.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member and waits until it has stopped (open client requests are given etcd's
// request timeout to finish). It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
	})
	return nil
}
