package routing

// Replica is one store holding a key. Ready is false while the blob is still being copied there: the
// placement already names the store, but fetches must not go to it yet.
type Replica struct {
	Store string
	Ready bool
}

// Snapshot is an immutable placement (key → replicas) read on the hot path: workers pick replicas for
// every fetch. Build one per placement epoch with NewSnapshot, publish it through an
// atomic.Pointer[Snapshot] and never mutate it, so readers need no locks. A nil *Snapshot is valid and
// empty (epoch 0), so a worker may read the pointer before the first placement arrives.
type Snapshot struct {
	epoch int64
	keys  map[string]snapEntry
}

type snapEntry struct {
	replicas []Replica
	ready    []string // the stores of the ready replicas, in placement order
	// spin offsets the caller's rotation per key, so one caller (one seed) spreads its fetches over
	// every store instead of always taking the same position in each key's list.
	spin uint64
}

// NewSnapshot builds a snapshot of placement at epoch. It copies its input: the caller may reuse or
// change placement afterwards.
func NewSnapshot(epoch int64, placement map[string][]Replica) *Snapshot {
	n, nReady := 0, 0
	for _, rs := range placement {
		n += len(rs)
		for _, r := range rs {
			if r.Ready {
				nReady++
			}
		}
	}
	s := &Snapshot{epoch: epoch, keys: make(map[string]snapEntry, len(placement))}
	// One backing array for all keys (two allocations, not two per key); each key's slice is capped at
	// its length so that an append by a careless reader cannot write into the next key's.
	backing := make([]Replica, 0, n)
	readyBacking := make([]string, 0, nReady)
	for key, rs := range placement {
		start, readyStart := len(backing), len(readyBacking)
		backing = append(backing, rs...)
		for _, r := range rs {
			if r.Ready {
				readyBacking = append(readyBacking, r.Store)
			}
		}
		s.keys[key] = snapEntry{
			replicas: backing[start:len(backing):len(backing)],
			ready:    readyBacking[readyStart:len(readyBacking):len(readyBacking)],
			spin:     mix64(fnv1a(fnvOffset64, key)),
		}
	}
	return s
}

// Epoch is the placement epoch the snapshot was built from.
func (s *Snapshot) Epoch() int64 {
	if s == nil {
		return 0
	}
	return s.epoch
}

// Len is the number of keys.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.keys)
}

// Replicas returns the replicas of key in placement order, nil if key is unknown. The slice is shared
// by every reader of the snapshot: it must not be modified.
func (s *Snapshot) Replicas(key string) []Replica {
	if s == nil {
		return nil
	}
	return s.keys[key].replicas
}

// Choose orders the ready replicas of key for a fetch, the order in which the fetch should try them:
// healthy stores (per healthy; nil treats every store as healthy) before unhealthy ones, and within
// each group the placement order rotated by seed. Unready replicas are never returned. Callers pass a
// per-worker seed (or a per-fetch counter) so that the reads of one key spread across its replicas
// instead of all going to the first; a given seed always gives the same order, which keeps a worker's
// connections warm. The result is the caller's; nil when key is unknown or has no ready replica.
func (s *Snapshot) Choose(key string, seed uint64, healthy func(store string) bool) []string {
	if s == nil {
		return nil
	}
	e, ok := s.keys[key]
	if !ok {
		return nil
	}
	// Rotate among the ready replicas only: rotating over all of them and then skipping the unready
	// would send the unready one's share to its successor, doubling that store's load.
	ready := len(e.ready)
	if ready == 0 {
		return nil
	}
	// Healthy stores fill out from the front, unhealthy ones from the back (reversed afterwards to keep
	// their rotated order): one allocation, and healthy is called once per replica.
	out := make([]string, ready)
	front, back := 0, ready
	start := int((seed + e.spin) % uint64(ready))
	for i := range ready {
		store := e.ready[(start+i)%ready]
		if healthy == nil || healthy(store) {
			out[front] = store
			front++
		} else {
			back--
			out[back] = store
		}
	}
	for i, j := back, ready-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
