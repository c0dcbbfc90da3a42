package routing

import (
	"github.com/pregate/pregate/expertstore/blob"
)

// Entry is one blob of a snapshot: what it is (its digest, parsed once, and size) and where it lives
// (its replicas, with the addresses of their stores).
type Entry struct {
	Digest blob.Digest
	Size   int64
	// Replicas lists every replica in placement order (ready or not); the snapshot fills in the
	// stores' addresses ("" for a store it has no record of). Shared by every reader: read-only.
	Replicas []Replica

	healthy, unhealthy []Replica // ready replicas with an address, by their store's health
	unresolved         bool      // a ready replica's store has no known address
	present            bool
	// spin offsets the caller's rotation per entry, so one caller (one seed) spreads its fetches
	// over every store instead of always taking the same position in each blob's list.
	spin uint64
}

// Choose returns the replicas to fetch the blob from, in the order to try them: ready replicas on
// healthy stores, then on unhealthy ones, each group in placement order rotated by seed. Callers pass
// a per-worker seed (or a per-fetch counter) so that reads of one blob spread across its replicas; a
// given seed always gives the same order, which keeps a worker's connections warm. Replicas that are
// not ready, or whose store has no known address (see Unresolved), are left out. The result is the
// caller's; nil when no replica qualifies.
func (e *Entry) Choose(seed uint64) []Replica {
	n := len(e.healthy) + len(e.unhealthy)
	if n == 0 {
		return nil
	}
	out := make([]Replica, 0, n)
	out = rotated(out, e.healthy, seed+e.spin)
	return rotated(out, e.unhealthy, seed+e.spin)
}

// rotated appends rs rotated left by r.
func rotated(out, rs []Replica, r uint64) []Replica {
	if len(rs) == 0 {
		return out
	}
	i := int(r % uint64(len(rs)))
	return append(append(out, rs[i:]...), rs[:i]...)
}

// Unresolved reports whether a ready replica of the blob is on a store the snapshot has no address
// for (it joined after the store records were read): a caller may re-read them.
func (e *Entry) Unresolved() bool { return e.unresolved }

// StoreAddr is what a snapshot knows of a store: where to reach it and whether it is healthy (alive,
// per the coordinator's record).
type StoreAddr struct {
	GRPCAddr, DataAddr string
	Healthy            bool
}

// Placements is a snapshot's input: the blobs of a model, with their replicas as placement records
// name them (no addresses).
type Placements struct {
	Experts map[ExpertKey]Entry
	Dense   map[string]Entry
}

// Snapshot is an immutable view of a model's placement read on the hot path: a worker looks up every
// expert it fetches here, and gets its digest, size and replicas with addresses in one lookup. Build
// one per placement epoch (and whenever the stores' addresses or health change) with NewSnapshot,
// publish it through an atomic.Pointer[Snapshot] and never mutate it, so readers need no locks. A nil
// *Snapshot is valid and empty (epoch 0), so a worker may read the pointer before the first
// placement arrives.
type Snapshot struct {
	epoch   int64
	experts [][]Entry // [block][expert]; present false where placement has no record
	n       int
	dense   map[string]*Entry
}

// NewSnapshot builds a snapshot of p at epoch, resolving every replica's store in stores. It copies
// its input: the caller may reuse or change p and stores afterwards.
func NewSnapshot(epoch int64, p Placements, stores map[string]StoreAddr) *Snapshot {
	s := &Snapshot{epoch: epoch, n: len(p.Experts) + len(p.Dense), dense: make(map[string]*Entry, len(p.Dense))}
	for k := range p.Experts {
		if k.Block < 0 || k.Expert < 0 {
			s.n--
			continue
		}
		for len(s.experts) <= k.Block {
			s.experts = append(s.experts, nil)
		}
		s.experts[k.Block] = append(s.experts[k.Block], make([]Entry, max(0, k.Expert+1-len(s.experts[k.Block])))...)
	}
	// One backing array for every entry's lists (a few allocations, not several per blob); each list
	// is capped at its length so that an append by a careless reader cannot reach the next entry's.
	total := 0
	for _, e := range p.Experts {
		total += len(e.Replicas)
	}
	for _, e := range p.Dense {
		total += len(e.Replicas)
	}
	backing := make([]Replica, 0, 2*total)
	resolve := func(in Entry, spin uint64) Entry {
		out := Entry{Digest: in.Digest, Size: in.Size, present: true, spin: spin}
		start := len(backing)
		for _, r := range in.Replicas {
			a, ok := stores[r.Store]
			r.GRPCAddr, r.DataAddr = a.GRPCAddr, a.DataAddr
			backing = append(backing, r)
			if r.Ready() && !ok {
				out.unresolved = true
			}
		}
		out.Replicas = backing[start:len(backing):len(backing)]
		for _, healthy := range []bool{true, false} {
			start := len(backing)
			for _, r := range out.Replicas {
				if a, ok := stores[r.Store]; r.Ready() && ok && a.Healthy == healthy {
					backing = append(backing, r)
				}
			}
			if healthy {
				out.healthy = backing[start:len(backing):len(backing)]
			} else {
				out.unhealthy = backing[start:len(backing):len(backing)]
			}
		}
		return out
	}
	for k, e := range p.Experts {
		if k.Block >= 0 && k.Expert >= 0 {
			s.experts[k.Block][k.Expert] = resolve(e, mix64(uint64(k.Block)<<32|uint64(uint32(k.Expert))))
		}
	}
	for name, e := range p.Dense {
		r := resolve(e, mix64(fnv1a(fnvOffset64, name)))
		s.dense[name] = &r
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

// Len is the number of blobs (experts and dense).
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Expert returns the entry of expert k, or nil when the snapshot has none. It allocates nothing and
// takes no lock: two slice indexings.
func (s *Snapshot) Expert(k ExpertKey) *Entry {
	if s == nil || k.Block < 0 || k.Block >= len(s.experts) || k.Expert < 0 || k.Expert >= len(s.experts[k.Block]) {
		return nil
	}
	if e := &s.experts[k.Block][k.Expert]; e.present {
		return e
	}
	return nil
}

// Dense returns the entry of the dense blob called name, or nil.
func (s *Snapshot) Dense(name string) *Entry {
	if s == nil {
		return nil
	}
	return s.dense[name]
}
