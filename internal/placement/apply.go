package placement

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Change is one placement write of a batch.
type Change struct {
	Key       string     // full etcd key, from ExpertKey or DenseKey
	Placement *Placement // the new value; nil deletes the key
	// ModRevision is the key's ModRevision as its author read it (Placements, DensePlacements,
	// Event.Revision); 0 means the key must not exist yet.
	ModRevision int64
}

// Apply writes a batch of placement changes in one Txn that compares every key's ModRevision with
// the one its Change carries. If any differs nothing is written and Apply returns ErrConflict: the
// caller re-reads and recomputes.
//
// A batch longer than one Txn may hold (WithMaxTxnOps; etcd's default is 128 operations) is split
// into several Txns in order. Each is atomic on its own, not the batch: on an error from the k-th
// Txn the earlier ones stay written (the error says how many changes were), so a caller that
// needs all-or-nothing keeps its batches within one Txn. Changes are checked (keys, values, no
// duplicates) before anything is written.
func (s *Store) Apply(ctx context.Context, changes []Change) error {
	_, err := s.apply(ctx, nil, changes, nil)
	return err
}

// ApplyIf is Apply with guard added to every Txn's compares — the coordinator passes
// LeaderGuard(its election) so that a deposed leader writes nothing. A failing guard returns
// ErrNotLeader (it is checked first: a batch that both conflicts and fails the guard returns
// ErrNotLeader).
func (s *Store) ApplyIf(ctx context.Context, guard clientv3.Cmp, changes []Change) error {
	_, err := s.apply(ctx, &guard, changes, nil)
	return err
}

// ApplyIfRev is ApplyIf that also returns the revision of its (last) Txn: the ModRevision every
// key it put now has, for the author's next Change to the same keys.
func (s *Store) ApplyIfRev(ctx context.Context, guard clientv3.Cmp, changes []Change) (int64, error) {
	return s.apply(ctx, &guard, changes, nil)
}

// PublishModel publishes a model: it applies changes (its placements, each guarded like Apply's)
// and writes m last, in the same Txn as the last of them, so the manifest — which is what makes a
// model visible to Models and Manifest — exists only if every placement write succeeded. When the
// changes fit in one Txn the whole publication is atomic; otherwise an error can leave earlier
// placements written without a manifest, which readers ignore and a retry (re-read, recompute)
// overwrites. Every change must belong to m.Name.
func (s *Store) PublishModel(ctx context.Context, m Manifest, changes []Change) error {
	if err := m.Validate(); err != nil {
		return err
	}
	for _, c := range changes {
		pk, err := s.ParseKey(c.Key)
		if err != nil {
			return err
		}
		if pk.Model != m.Name {
			return fmt.Errorf("%w: %s is not a key of model %q", ErrInvalid, c.Key, m.Name)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("placement: manifest %q: %w", m.Name, err)
	}
	_, err = s.apply(ctx, nil, changes, []clientv3.Op{clientv3.OpPut(s.ManifestKey(m.Name), string(b))})
	return err
}

// apply validates changes, then writes them in Txns of at most s.maxTxnOps operations, each
// guarded by guard (when not nil) and every change's ModRevision; last is added to the final Txn.
// It returns the revision of the last Txn.
func (s *Store) apply(ctx context.Context, guard *clientv3.Cmp, changes []Change, last []clientv3.Op) (int64, error) {
	type prepared struct {
		cmp clientv3.Cmp
		op  clientv3.Op
	}
	preps := make([]prepared, 0, len(changes))
	seen := make(map[string]bool, len(changes))
	for _, c := range changes {
		if _, err := s.ParseKey(c.Key); err != nil {
			return 0, err
		}
		if seen[c.Key] {
			return 0, fmt.Errorf("%w: %s changed twice in one batch", ErrInvalid, c.Key)
		}
		seen[c.Key] = true
		if c.ModRevision < 0 || c.Placement == nil && c.ModRevision == 0 {
			return 0, fmt.Errorf("%w: %s: ModRevision %d (a delete needs the revision it read)", ErrInvalid, c.Key, c.ModRevision)
		}
		p := prepared{cmp: clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.ModRevision)}
		if c.Placement == nil {
			p.op = clientv3.OpDelete(c.Key)
		} else {
			if err := c.Placement.Validate(); err != nil {
				return 0, fmt.Errorf("%s: %w", c.Key, err)
			}
			b, err := json.Marshal(c.Placement)
			if err != nil {
				return 0, fmt.Errorf("placement: %s: %w", c.Key, err)
			}
			p.op = clientv3.OpPut(c.Key, string(b))
		}
		preps = append(preps, p)
	}

	// Per Txn: compares = changes (+ the guard), success ops = changes (+ last on the final one),
	// failure = one nested Txn re-checking the guard, whose own compare etcd counts against what
	// the outer compares leave of the limit.
	per := s.maxTxnOps
	if guard != nil {
		per -= 2
	}
	done := 0
	var rev int64
	for done < len(preps) || last != nil {
		n := min(per, len(preps)-done)
		batch := preps[done : done+n]
		var extra []clientv3.Op
		if done+n == len(preps) && n+len(last) <= s.maxTxnOps {
			extra, last = last, nil
		}
		cmps := make([]clientv3.Cmp, 0, n+1)
		ops := make([]clientv3.Op, 0, n+len(extra))
		if guard != nil {
			cmps = append(cmps, *guard)
		}
		for _, p := range batch {
			cmps = append(cmps, p.cmp)
			ops = append(ops, p.op)
		}
		ops = append(ops, extra...)
		txn := s.cli.Txn(ctx).If(cmps...).Then(ops...)
		if guard != nil {
			txn = txn.Else(clientv3.OpTxn([]clientv3.Cmp{*guard}, nil, nil))
		}
		resp, err := txn.Commit()
		switch {
		case err != nil:
			err = fmt.Errorf("placement: apply: %w", err)
		case !resp.Succeeded:
			err = ErrConflict
			if guard != nil && len(resp.Responses) == 1 && !resp.Responses[0].GetResponseTxn().GetSucceeded() {
				err = ErrNotLeader
			}
		}
		if err != nil {
			if done > 0 {
				return 0, fmt.Errorf("%w (%d of %d changes were written before)", err, done, len(preps))
			}
			return 0, err
		}
		rev = resp.Header.Revision
		done += n
	}
	return rev, nil
}
