// Package placement is the cluster's state in etcd: the key schema, typed reads and writes, and
// watches. etcd is the authority; memberlist gossip is only a hint.
//
//	/pregate/<cluster>/models/<model>/manifest                  Manifest (written last: a model exists once it has one)
//	/pregate/<cluster>/models/<model>/placement/<block>/<expert> Placement of an expert blob (%05d numbers: range reads come back ordered)
//	/pregate/<cluster>/models/<model>/dense/<name>               Placement of a dense blob
//	/pregate/<cluster>/stores/<name>                            StoreRecord, leased
//	/pregate/<cluster>/workers/<name>                           WorkerRecord, leased
//	/pregate/<cluster>/coordinator/leader                       election prefix (concurrency.Election)
//
// Names (cluster, model, dense blob, store, worker) are path-escaped in keys, so any string works.
//
// Every placement change is optimistic: read (Placements returns each key's ModRevision), compute,
// then Apply a batch whose Txn compares every key's ModRevision with what was read; on ErrConflict
// re-read and recompute. Nothing is ever locked. The coordinator adds its election's LeaderGuard
// compare (ApplyIf) so that a deposed leader cannot write.
package placement

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// Sentinel errors.
var (
	ErrNotFound  = errors.New("placement: not found")
	ErrConflict  = errors.New("placement: conflict (a key changed since it was read)")
	ErrNotLeader = errors.New("placement: guard failed (not the leader)")
	ErrInvalid   = errors.New("placement: invalid")
	ErrCorrupt   = errors.New("placement: corrupt record")
)

// Dial returns an etcd client for endpoints with pregate's settings: etcd's own logging off (its
// client logs every retry), a bounded dial, keepalives that notice a dead member. With r, it
// speaks mutual TLS (https endpoints; etcd takes the certificate's role as its user).
func Dial(endpoints []string, r *tlsutil.Reloader) (*clientv3.Client, error) {
	var tc *tls.Config
	if r != nil {
		tc = r.EtcdClientConfig()
	}
	cli, err := clientv3.New(clientv3.Config{
		TLS:                  tc,
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("placement: etcd client for %v: %w", endpoints, err)
	}
	return cli, nil
}

// DefaultMaxTxnOps is etcd's default limit on the operations of one Txn (--max-txn-ops).
const DefaultMaxTxnOps = 128

// Store reads and writes one cluster's state. It is safe for concurrent use; it owns nothing (the
// caller owns and closes the client).
type Store struct {
	cli       *clientv3.Client
	prefix    string
	maxTxnOps int
}

// New returns a Store for cluster ("" means "default") over cli.
func New(cli *clientv3.Client, cluster string) *Store {
	if cluster == "" {
		cluster = "default"
	}
	return &Store{cli: cli, prefix: "/pregate/" + escape(cluster) + "/", maxTxnOps: DefaultMaxTxnOps}
}

// WithMaxTxnOps returns a copy of s that keeps every Txn within n operations, for an etcd run with
// a --max-txn-ops other than 128. n below 3 is taken as 3.
func (s *Store) WithMaxTxnOps(n int) *Store {
	c := *s
	c.maxTxnOps = max(n, 3)
	return &c
}

// Prefix returns the cluster's key prefix, "/pregate/<cluster>/".
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) modelsPrefix() string            { return s.prefix + "models/" }
func (s *Store) modelPrefix(model string) string { return s.modelsPrefix() + escape(model) + "/" }

// ManifestKey returns the key of model's manifest.
func (s *Store) ManifestKey(model string) string { return s.modelPrefix(model) + "manifest" }

// ExpertKey returns the key of an expert blob's placement. Block and expert must be within
// 0…MaxIndex (Apply rejects keys outside).
func (s *Store) ExpertKey(model string, k routing.ExpertKey) string {
	return fmt.Sprintf("%splacement/%05d/%05d", s.modelPrefix(model), k.Block, k.Expert)
}

// DenseKey returns the key of a dense blob's placement.
func (s *Store) DenseKey(model, name string) string {
	return s.modelPrefix(model) + "dense/" + escape(name)
}

// StoreKey returns the key of a store's record.
func (s *Store) StoreKey(name string) string { return s.prefix + "stores/" + escape(name) }

// WorkerKey returns the key of a worker's record.
func (s *Store) WorkerKey(name string) string { return s.prefix + "workers/" + escape(name) }

// LeaderPrefix returns the coordinator's election prefix.
func (s *Store) LeaderPrefix() string { return s.prefix + "coordinator/leader" }

// Election returns the coordinator election on sess (Campaign, Observe; LeaderGuard for ApplyIf).
func (s *Store) Election(sess *concurrency.Session) *concurrency.Election {
	return concurrency.NewElection(sess, s.LeaderPrefix())
}

// LeaderGuard returns the compare that holds while e's campaign is the leader — its key still
// exists with the revision it was created at — for ApplyIf. (concurrency.Mutex has IsOwner;
// Election has no such method.) It never holds for an election that has not won a campaign.
func LeaderGuard(e *concurrency.Election) clientv3.Cmp {
	if e.Key() == "" {
		return clientv3.Compare(clientv3.CreateRevision("/pregate/no-leader"), "=", -1) // never true
	}
	return clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())
}

// ParsedKey is what ParseKey finds in a placement key.
type ParsedKey struct {
	Model  string
	Expert routing.ExpertKey // when Dense is ""
	Dense  string            // the dense blob's name, for a dense placement
}

// ParseKey parses a key that ExpertKey or DenseKey made.
func (s *Store) ParseKey(key string) (ParsedKey, error) {
	bad := fmt.Errorf("%w: %q is not a placement key of %s", ErrInvalid, key, s.prefix)
	rest, ok := strings.CutPrefix(key, s.modelsPrefix())
	if !ok {
		return ParsedKey{}, bad
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 3 {
		return ParsedKey{}, bad
	}
	model, err := url.PathUnescape(parts[0])
	if err != nil || model == "" {
		return ParsedKey{}, bad
	}
	switch {
	case parts[1] == "dense" && len(parts) == 3:
		name, err := url.PathUnescape(parts[2])
		if err != nil || name == "" {
			return ParsedKey{}, bad
		}
		return ParsedKey{Model: model, Dense: name}, nil
	case parts[1] == "placement" && len(parts) == 4:
		b, okb := parseIndex(parts[2])
		e, oke := parseIndex(parts[3])
		if !okb || !oke {
			return ParsedKey{}, bad
		}
		return ParsedKey{Model: model, Expert: routing.ExpertKey{Block: b, Expert: e}}, nil
	}
	return ParsedKey{}, bad
}

// parseIndex parses exactly five decimal digits.
func parseIndex(s string) (int, bool) {
	if len(s) != 5 || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// escape makes a name safe as one key segment (no '/').
func escape(name string) string { return url.PathEscape(name) }

// IsTrigger reports whether key is one whose change should make the coordinator reconcile: a
// model's manifest or a drain mark.
func (s *Store) IsTrigger(key string) bool {
	rest, ok := strings.CutPrefix(key, s.prefix)
	if !ok {
		return false
	}
	return strings.HasPrefix(rest, "drain/") || strings.HasPrefix(rest, "models/") && strings.HasSuffix(rest, "/manifest")
}
