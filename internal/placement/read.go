package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/routing"
)

// pageSize is the number of keys one range request returns; larger reads are paged at one
// revision, so a model's 15 000 placements never make a single huge response.
const pageSize = 1000

// PutManifest writes (or overwrites) model m's manifest. Publishing a new model goes through
// PublishModel instead, which writes the manifest after the placements.
func (s *Store) PutManifest(ctx context.Context, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("placement: manifest %q: %w", m.Name, err)
	}
	if _, err := s.cli.Put(ctx, s.ManifestKey(m.Name), string(b)); err != nil {
		return fmt.Errorf("placement: put manifest %q: %w", m.Name, err)
	}
	return nil
}

// Manifest returns model's manifest and its ModRevision, or ErrNotFound.
func (s *Store) Manifest(ctx context.Context, model string) (Manifest, int64, error) {
	if model == "" {
		return Manifest{}, 0, fmt.Errorf("%w: empty model name", ErrInvalid)
	}
	key := s.ManifestKey(model)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return Manifest{}, 0, fmt.Errorf("placement: get manifest %q: %w", model, err)
	}
	if len(resp.Kvs) == 0 {
		return Manifest{}, 0, fmt.Errorf("%w: manifest of model %q", ErrNotFound, model)
	}
	var m Manifest
	if err := decode(resp.Kvs[0], &m); err != nil {
		return Manifest{}, 0, err
	}
	return m, resp.Kvs[0].ModRevision, nil
}

// Models returns the names of the published models (those with a manifest), sorted. It reads two
// keys per model, never the placements.
func (s *Store) Models(ctx context.Context) ([]string, error) {
	base := s.modelsPrefix()
	end := clientv3.GetPrefixRangeEnd(base)
	var names []string
	var rev int64
	for from := base; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(1)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, fmt.Errorf("placement: list models: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if len(resp.Kvs) == 0 {
			slices.Sort(names)
			return names, nil
		}
		esc, _, _ := strings.Cut(strings.TrimPrefix(string(resp.Kvs[0].Key), base), "/")
		m, err := s.cli.Get(ctx, base+esc+"/manifest", clientv3.WithCountOnly(), clientv3.WithRev(rev))
		if err != nil {
			return nil, fmt.Errorf("placement: list models: %w", err)
		}
		if m.Count > 0 {
			name, err := url.PathUnescape(esc)
			if err != nil {
				return nil, fmt.Errorf("%w: model key %q: %v", ErrCorrupt, resp.Kvs[0].Key, err)
			}
			names = append(names, name)
		}
		from = base + esc + "0" // '0' follows '/': the first key after this model's
	}
}

// Placements returns model's expert placements with each key's ModRevision (what a Change
// carries), read at one revision, which it returns too (watch from it + 1).
func (s *Store) Placements(ctx context.Context, model string) (map[routing.ExpertKey]Placement, map[routing.ExpertKey]int64, int64, error) {
	if model == "" {
		return nil, nil, 0, fmt.Errorf("%w: empty model name", ErrInvalid)
	}
	ps, revs := map[routing.ExpertKey]Placement{}, map[routing.ExpertKey]int64{}
	rev, err := s.rangeAll(ctx, s.modelPrefix(model)+"placement/", func(kv *mvccpb.KeyValue) error {
		pk, err := s.ParseKey(string(kv.Key))
		if err != nil || pk.Dense != "" {
			return fmt.Errorf("%w: unexpected key %q", ErrCorrupt, kv.Key)
		}
		var p Placement
		if err := decode(kv, &p); err != nil {
			return err
		}
		ps[pk.Expert], revs[pk.Expert] = p, kv.ModRevision
		return nil
	})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("placement: placements of %q: %w", model, err)
	}
	return ps, revs, rev, nil
}

// DensePlacements is Placements for model's dense blobs, by name.
func (s *Store) DensePlacements(ctx context.Context, model string) (map[string]Placement, map[string]int64, int64, error) {
	if model == "" {
		return nil, nil, 0, fmt.Errorf("%w: empty model name", ErrInvalid)
	}
	ps, revs := map[string]Placement{}, map[string]int64{}
	rev, err := s.rangeAll(ctx, s.modelPrefix(model)+"dense/", func(kv *mvccpb.KeyValue) error {
		pk, err := s.ParseKey(string(kv.Key))
		if err != nil || pk.Dense == "" {
			return fmt.Errorf("%w: unexpected key %q", ErrCorrupt, kv.Key)
		}
		var p Placement
		if err := decode(kv, &p); err != nil {
			return err
		}
		ps[pk.Dense], revs[pk.Dense] = p, kv.ModRevision
		return nil
	})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("placement: dense placements of %q: %w", model, err)
	}
	return ps, revs, rev, nil
}

// PutStore writes a store's record under lease (its TTL is the record's: when whoever reports the
// store stops keeping the lease alive, the record disappears). clientv3.NoLease writes a record
// that stays until deleted.
func (s *Store) PutStore(ctx context.Context, rec StoreRecord, lease clientv3.LeaseID) error {
	if rec.Name == "" {
		return fmt.Errorf("%w: store record without a name", ErrInvalid)
	}
	return s.putRecord(ctx, s.StoreKey(rec.Name), rec, lease)
}

// Stores returns every store record, ordered by name (escaped).
func (s *Store) Stores(ctx context.Context) ([]StoreRecord, error) {
	return listRecords[StoreRecord](ctx, s, s.prefix+"stores/")
}

// PutWorker writes a worker's record under lease, as PutStore.
func (s *Store) PutWorker(ctx context.Context, rec WorkerRecord, lease clientv3.LeaseID) error {
	if rec.Name == "" {
		return fmt.Errorf("%w: worker record without a name", ErrInvalid)
	}
	return s.putRecord(ctx, s.WorkerKey(rec.Name), rec, lease)
}

// Workers returns every worker record, ordered by name (escaped).
func (s *Store) Workers(ctx context.Context) ([]WorkerRecord, error) {
	return listRecords[WorkerRecord](ctx, s, s.prefix+"workers/")
}

func (s *Store) putRecord(ctx context.Context, key string, rec any, lease clientv3.LeaseID) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("placement: %s: %w", key, err)
	}
	var opts []clientv3.OpOption
	if lease != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(lease))
	}
	if _, err := s.cli.Put(ctx, key, string(b), opts...); err != nil {
		return fmt.Errorf("placement: put %s: %w", key, err)
	}
	return nil
}

func listRecords[T any](ctx context.Context, s *Store, prefix string) ([]T, error) {
	var out []T
	if _, err := s.rangeAll(ctx, prefix, func(kv *mvccpb.KeyValue) error {
		var rec T
		if err := decode(kv, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("placement: list %s: %w", prefix, err)
	}
	return out, nil
}

// rangeAll calls fn on every key under prefix in key order, paging at the revision of the first
// page, which it returns.
func (s *Store) rangeAll(ctx context.Context, prefix string, fn func(*mvccpb.KeyValue) error) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	for from := prefix; ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision // later pages' headers carry the current revision, not rev
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// decode unmarshals kv's JSON value into v.
func decode(kv *mvccpb.KeyValue, v any) error {
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, kv.Key, err)
	}
	return nil
}

// DeleteStore removes a store's record (a store that left and holds nothing is forgotten).
func (s *Store) DeleteStore(ctx context.Context, name string) error {
	if _, err := s.cli.Delete(ctx, s.StoreKey(name)); err != nil {
		return fmt.Errorf("placement: delete store %q: %w", name, err)
	}
	return nil
}

// DrainKey returns the key that marks a store as draining.
func (s *Store) DrainKey(name string) string { return s.prefix + "drain/" + escape(name) }

// SetDrain marks the named stores as draining (on) or not, all in one Txn: the coordinator never
// sees some of them marked and the rest not, which would move blobs onto a store about to be
// drained too. The coordinator moves every replica off a draining store, which may then be stopped
// without any blob losing a replica: the way to scale stores down. The mark outlives the store;
// clear it if the store is to take blobs again.
func (s *Store) SetDrain(ctx context.Context, on bool, names ...string) error {
	if len(names) == 0 || len(names) > s.maxTxnOps {
		return fmt.Errorf("%w: drain of %d stores at once (1 to %d)", ErrInvalid, len(names), s.maxTxnOps)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	ops := make([]clientv3.Op, len(names))
	for i, name := range names {
		if name == "" {
			return fmt.Errorf("%w: drain of an empty store name", ErrInvalid)
		}
		if on {
			ops[i] = clientv3.OpPut(s.DrainKey(name), now)
		} else {
			ops[i] = clientv3.OpDelete(s.DrainKey(name))
		}
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("placement: drain %q: %w", names, err)
	}
	return nil
}

// Drains returns the names of the stores marked draining.
func (s *Store) Drains(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	prefix := s.prefix + "drain/"
	if _, err := s.rangeAll(ctx, prefix, func(kv *mvccpb.KeyValue) error {
		name, err := url.PathUnescape(strings.TrimPrefix(string(kv.Key), prefix))
		if err != nil {
			return fmt.Errorf("%w: drain key %q", ErrCorrupt, kv.Key)
		}
		out[name] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("placement: list drains: %w", err)
	}
	return out, nil
}

// Leader returns the value the current coordinator leader campaigned with (concurrency.Election
// semantics: the candidate with the oldest key under LeaderPrefix), or ErrNotFound when there is
// no leader.
func (s *Store) Leader(ctx context.Context) (string, error) {
	resp, err := s.cli.Get(ctx, s.LeaderPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("placement: leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("%w: no coordinator leader", ErrNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// ClusterConfig is the cluster-wide settings the leader coordinator publishes for the other tools.
type ClusterConfig struct {
	Replicas int `json:"replicas"` // the replication factor R
}

// PutClusterConfig writes the cluster's settings.
func (s *Store) PutClusterConfig(ctx context.Context, cc ClusterConfig) error {
	return s.putRecord(ctx, s.prefix+"config", cc, clientv3.NoLease)
}

// ClusterConfig reads the cluster's settings, or ErrNotFound before a coordinator wrote them.
func (s *Store) ClusterConfig(ctx context.Context) (ClusterConfig, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"config")
	if err != nil {
		return ClusterConfig{}, fmt.Errorf("placement: cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return ClusterConfig{}, fmt.Errorf("%w: cluster config", ErrNotFound)
	}
	var cc ClusterConfig
	err = decode(resp.Kvs[0], &cc)
	return cc, err
}
