package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/pregate/pregate/expertstore/blob"
)

// ImportKey returns the key that records an import of model in progress.
func (s *Store) ImportKey(model string) string { return s.prefix + "imports/" + escape(model) }

// BeginImport records that m is being imported: its blobs are uploaded to the stores before the
// manifest and placements that name them are published, and the coordinator's collection of
// unreferenced blobs must leave them alone meanwhile. The record lives under a lease this process
// keeps alive until end is called (which deletes it), or until the process dies, when it expires
// within ttl and the blobs of the failed import become collectable.
func (s *Store) BeginImport(ctx context.Context, m Manifest, ttl time.Duration) (end func(), err error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("placement: import record of %q: %w", m.Name, err)
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(max(1, int(ttl.Seconds()))))
	if err != nil {
		return nil, fmt.Errorf("placement: import record of %q: %w", m.Name, err)
	}
	if _, err := s.cli.Put(ctx, s.ImportKey(m.Name), string(b), clientv3.WithLease(sess.Lease())); err != nil {
		sess.Close()
		return nil, fmt.Errorf("placement: import record of %q: %w", m.Name, err)
	}
	return func() { sess.Close() }, nil // revoking the lease deletes the record
}

// Importing returns the digests of every blob that an import in progress names.
func (s *Store) Importing(ctx context.Context) (map[blob.Digest]bool, error) {
	out := map[blob.Digest]bool{}
	if _, err := s.rangeAll(ctx, s.prefix+"imports/", func(kv *mvccpb.KeyValue) error {
		var m Manifest
		if err := decode(kv, &m); err != nil {
			return err
		}
		for _, e := range m.Experts {
			out[e.Digest] = true
		}
		for _, d := range m.Dense {
			out[d.Digest] = true
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("placement: imports in progress: %w", err)
	}
	return out, nil
}
