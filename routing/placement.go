package routing

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Store is a placement target.
type Store struct {
	Name string
	// Capacity is the bytes the store may hold for blobs. It is both the store's weight in rendezvous
	// hashing (a store twice as big is asked first twice as often) and a hard limit.
	Capacity int64
}

// Item is one thing to place: an expert blob (or a dense blob).
type Item struct {
	// Key is the item's stable identity, e.g. "<model>/<block>/<expert>". Hashing uses it and not the
	// blob digest, so re-importing a changed checkpoint keeps every expert on the stores it was on.
	Key  string
	Size int64
}

// Assignment maps Item.Key to its replica store names, ordered by preference (rendezvous score,
// highest first).
type Assignment map[string][]string

// ErrNoCapacity is wrapped by Place when some item could not get all its replicas.
var ErrNoCapacity = errors.New("routing: not enough store capacity")

// Place assigns every item to min(r, len(stores)) distinct stores by weighted rendezvous (highest
// random weight) hashing, with the stores' capacities as weights and as hard limits.
//
// Each (store, key) pair gets score = -Capacity / ln(u), u = hash(store, key) mapped into (0, 1): the
// "logarithmic method" of weighted rendezvous hashing (Schindelhauer and Schomaker, "Weighted
// Distributed Hash Tables", SPAA 2005; also J. Resch, "New Hashing Algorithms for Data Storage",
// 2015). -ln(u)/w is exponentially distributed with rate w, so ranking stores by score draws them
// without replacement with probability proportional to weight: the first replica of a key lands on a
// store with probability Capacity/ΣCapacity. A key's ranking depends only on its own pairs, so a store
// that joins takes keys only onto itself and a store that leaves hands its keys only to the next store
// in each key's ranking: the movement is the least possible.
//
// Capacity is enforced by walking each key's ranking and skipping stores whose remaining capacity
// cannot take it. Items are processed largest first (then by key), both so the result does not depend
// on the input order and so the big blobs, which are the hardest to fit, claim space before small ones
// fragment it. A store with capacity 0 takes nothing (but counts in len(stores)). The pass is greedy
// and never revisits an item, so a cluster packed to within a few percent, with stores of unequal
// capacity, can get ErrNoCapacity although a tighter packing exists (1:1:2 stores, r=2: rendezvous
// gives each small store 7/12 of the bytes; with 0.57 of them as capacity the last items find the
// big store already holding them and both small ones full). Keep headroom.
//
// If some item cannot get min(r, len(stores)) replicas, Place returns an error wrapping ErrNoCapacity
// that names the first such item and the bytes missing, together with the partial assignment, in which
// every item is present, with the replicas it did get (possibly none).
func Place(items []Item, stores []Store, r int) (Assignment, error) {
	if r < 1 {
		return nil, fmt.Errorf("routing: replication factor %d, want ≥ 1", r)
	}
	ss := slices.Clone(stores)
	slices.SortFunc(ss, func(a, b Store) int { return strings.Compare(a.Name, b.Name) })
	for i, s := range ss {
		switch {
		case s.Name == "":
			return nil, errors.New("routing: store with an empty name")
		case s.Capacity < 0:
			return nil, fmt.Errorf("routing: store %q has negative capacity %d", s.Name, s.Capacity)
		case i > 0 && ss[i-1].Name == s.Name:
			return nil, fmt.Errorf("routing: store %q listed twice", s.Name)
		}
	}
	out := make(Assignment, len(items))
	for _, it := range items {
		switch _, dup := out[it.Key]; {
		case it.Key == "":
			return nil, errors.New("routing: item with an empty key")
		case it.Size < 0:
			return nil, fmt.Errorf("routing: item %q has negative size %d", it.Key, it.Size)
		case dup:
			return nil, fmt.Errorf("routing: item %q listed twice", it.Key)
		}
		out[it.Key] = nil
	}
	its := slices.Clone(items)
	slices.SortFunc(its, func(a, b Item) int {
		if c := cmp.Compare(b.Size, a.Size); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})

	want := min(r, len(ss))
	if want == 0 && len(its) > 0 {
		return out, fmt.Errorf("%w: no stores for item %q (%d bytes missing)", ErrNoCapacity, its[0].Key, its[0].Size)
	}
	prefix := make([]uint64, len(ss))
	free := make([]int64, len(ss))
	for i, s := range ss {
		prefix[i] = storePrefix(s.Name)
		free[i] = s.Capacity
	}
	type cand struct {
		score float64
		i     int
	}
	cands := make([]cand, len(ss))
	// One backing array for all replica lists; each list is capped at its length so that a caller
	// appending to one cannot overwrite the next.
	backing := make([]string, 0, len(its)*want)
	var (
		firstShort string // the first item short of replicas, for the error
		shortItems int
		shortBytes int64
	)
	for _, it := range its {
		for i, s := range ss {
			cands[i] = cand{score(prefix[i], it.Key, s.Capacity), i}
		}
		slices.SortFunc(cands, func(a, b cand) int {
			if c := cmp.Compare(b.score, a.score); c != 0 {
				return c
			}
			return cmp.Compare(a.i, b.i) // equal scores: by name, for determinism
		})
		start := len(backing)
		for _, c := range cands {
			if len(backing)-start == want {
				break
			}
			if free[c.i] < it.Size {
				continue
			}
			free[c.i] -= it.Size
			backing = append(backing, ss[c.i].Name)
		}
		got := len(backing) - start
		out[it.Key] = backing[start:len(backing):len(backing)]
		if got < want {
			missing := int64(want-got) * it.Size
			if firstShort == "" {
				firstShort = fmt.Sprintf("item %q (%d bytes) got %d of %d replicas, %d bytes missing",
					it.Key, it.Size, got, want, missing)
			}
			shortItems++
			shortBytes += missing
		}
	}
	if firstShort != "" {
		return out, fmt.Errorf("%w: %s; %d items short, %d bytes missing in all", ErrNoCapacity, firstShort, shortItems, shortBytes)
	}
	return out, nil
}

// The hash of a (store, key) pair is FNV-1a-64 of store+"\x00"+key followed by the splitmix64
// finaliser. It must never change: every coordinator, across restarts and versions, has to compute the
// same placement, or an upgrade would reshuffle every blob in the cluster. That rules out hash/maphash
// (its seeds are random per process and cannot be fixed) and anything outside the standard library;
// FNV-1a is fully specified and trivially reimplemented. FNV-1a alone mixes its last bytes poorly into
// the high bits, and keys differ mostly in their last bytes ("m/3/7" vs "m/3/8"); the splitmix64
// finaliser (Steele, Lea and Flood, "Fast Splittable Pseudorandom Number Generators", 2014) gives full
// avalanche, so the top 53 bits used for u are uniform. The "\x00" separator keeps ("ab", "c") and
// ("a", "bc") apart.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// storePrefix is the FNV state after store+"\x00", computed once per store instead of once per pair.
func storePrefix(store string) uint64 {
	return fnv1a(fnv1a(fnvOffset64, store), "\x00")
}

// score is the weighted rendezvous score of a key on the store whose storePrefix is prefix.
func score(prefix uint64, key string, capacity int64) float64 {
	h := mix64(fnv1a(prefix, key))
	// The top 53 bits as the midpoint of one of 2^53 equal cells: u is in (0, 1), never 0 or 1, so
	// ln(u) is finite and negative.
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(capacity) / math.Log(u)
}

// Move is one step of a rebalance: copy Key to store To from one of From (its current live replicas,
// tried in order), or, with Drop, delete Key from store To.
type Move struct {
	Key  string
	Size int64
	From []string
	To   string
	Drop bool
}

// Plan returns the moves that turn current into target, all copies first, then all drops
// (add-then-remove): a key's replica count only grows until every copy is done, so it never falls below
// min(its live replicas now, its live replicas in target), which is min(r, live stores) when target
// came from Place over the live stores. An executor must not run a key's drops unless all of that
// key's copies succeeded.
//
// Stores not in live are gone: they are neither copied from, nor copied to, nor dropped from. A copy
// lists as From the key's current replicas that are live, rotated from one copy to the next so that
// the copies of many keys whose first replica is the same store do not all read from it first.
//
// A key in target that no live store holds (all its replicas died, or it was never stored) cannot be
// copied: it is returned in lost, sorted, and must be written again (Put) from its source. A key
// absent from target is being removed: its live replicas are dropped. A key present in target with no
// live store (Place found no room for it, or target is stale) keeps its replicas: dropping them would
// lose the blob. sizes gives each key's Size (missing: 0). Moves are ordered by key within copies and
// within drops, so Plan is deterministic.
func Plan(current, target Assignment, sizes map[string]int64, live map[string]bool) (moves []Move, lost []string) {
	keys := make([]string, 0, len(current)+len(target))
	for k := range current {
		keys = append(keys, k)
	}
	for k := range target {
		if _, ok := current[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)

	var drops []Move
	spin := 0
	for _, key := range keys {
		var from, to []string
		for _, s := range current[key] {
			if live[s] && !slices.Contains(from, s) {
				from = append(from, s)
			}
		}
		tgt, inTarget := target[key]
		liveTarget := false
		for _, s := range tgt {
			if !live[s] {
				continue
			}
			liveTarget = true
			if !slices.Contains(from, s) && !slices.Contains(to, s) {
				to = append(to, s)
			}
		}
		if len(from) == 0 {
			if len(to) > 0 {
				lost = append(lost, key)
			}
			continue // nothing live to copy from or to drop
		}
		for _, s := range to {
			src := make([]string, len(from))
			n := copy(src, from[spin%len(from):])
			copy(src[n:], from)
			spin++
			moves = append(moves, Move{Key: key, Size: sizes[key], From: src, To: s})
		}
		if inTarget && !liveTarget {
			continue
		}
		for _, s := range from {
			if !slices.Contains(tgt, s) {
				drops = append(drops, Move{Key: key, Size: sizes[key], To: s, Drop: true})
			}
		}
	}
	return append(moves, drops...), lost
}

// MovedBytes sums the sizes of the copy moves: the bytes a rebalance sends between stores.
func MovedBytes(moves []Move) int64 {
	var n int64
	for _, m := range moves {
		if !m.Drop {
			n += m.Size
		}
	}
	return n
}
