package worker

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/routing"
)

// ErrCacheTooSmall: an expert does not fit in the cache budget at all.
var ErrCacheTooSmall = errors.New("worker: expert cache budget too small")

// Policy chooses which unpinned expert the cache evicts. It is told of every insertion, use and
// removal; the cache holds its lock around every call.
type Policy interface {
	Inserted(k routing.ExpertKey)
	Touched(k routing.ExpertKey)
	Removed(k routing.ExpertKey)
	// Victim returns the key to evict next among those evictable accepts, false if none.
	Victim(evictable func(routing.ExpertKey) bool) (routing.ExpertKey, bool)
}

// LRU evicts the least recently used expert.
type LRU struct {
	order *list.List // front: most recent
	at    map[routing.ExpertKey]*list.Element
}

// NewLRU returns an empty LRU policy.
func NewLRU() *LRU { return &LRU{order: list.New(), at: map[routing.ExpertKey]*list.Element{}} }

// Inserted implements Policy.
func (l *LRU) Inserted(k routing.ExpertKey) { l.at[k] = l.order.PushFront(k) }

// Touched implements Policy.
func (l *LRU) Touched(k routing.ExpertKey) {
	if e, ok := l.at[k]; ok {
		l.order.MoveToFront(e)
	}
}

// Removed implements Policy.
func (l *LRU) Removed(k routing.ExpertKey) {
	if e, ok := l.at[k]; ok {
		l.order.Remove(e)
		delete(l.at, k)
	}
}

// Victim implements Policy.
func (l *LRU) Victim(evictable func(routing.ExpertKey) bool) (routing.ExpertKey, bool) {
	for e := l.order.Back(); e != nil; e = e.Prev() {
		if k := e.Value.(routing.ExpertKey); evictable(k) {
			return k, true
		}
	}
	return routing.ExpertKey{}, false
}

// cacheEntry is one expert in the cache: being fetched (ready open) or ready.
type cacheEntry struct {
	key    routing.ExpertKey
	size   int64
	ticket uint64 // creation order: reservations are granted in this order
	pins   int    // users: a fetch in flight, an Acquire, a hint that the expert is wanted soon

	ready   chan struct{} // closed when weights or err is set
	weights *engine.ExpertWeights
	err     error
	buf     DeviceBuffer
	// copying is the copy of buf's bytes to the device, on a StreamWaiter device whose compute
	// stream waits for it (Acquire): the entry is ready once the copy is enqueued. Set by the
	// fetch before ready is closed.
	copying  Event
	reserved bool
	cancel   context.CancelFunc // stops the entry's fetch
	// abandoned: unpinned before its fetch finished, so the fetch was cancelled; get replaces it.
	abandoned bool
}

// Cache holds experts on the device within a byte budget. An expert is pinned while anyone uses it
// (its fetch and copy, an Acquire, a hint that a block is about to use it); unpinned ready experts
// are evicted by the Policy when space is needed. Space is granted in the order entries were
// created, so that experts needed first are never starved by prefetches made after them: with a
// budget of at least the largest expert the pipeline always makes progress.
type Cache struct {
	mu      sync.Mutex
	budget  int64
	used    int64
	peak    int64
	tickets uint64
	entries map[routing.ExpertKey]*cacheEntry
	waiting map[uint64]*cacheEntry // reservations not yet granted, by ticket
	policy  Policy
	changed chan struct{} // closed and replaced whenever space frees or a waiter leaves
	evicted int64
}

// NewCache returns a cache of budget bytes with policy (nil: LRU).
func NewCache(budget int64, policy Policy) *Cache {
	if policy == nil {
		policy = NewLRU()
	}
	return &Cache{budget: budget, entries: map[routing.ExpertKey]*cacheEntry{}, waiting: map[uint64]*cacheEntry{},
		policy: policy, changed: make(chan struct{})}
}

// CacheStats is a snapshot of the cache.
type CacheStats struct {
	Budget, Used, Peak int64
	Entries            int
	Evictions          int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Budget: c.budget, Used: c.used, Peak: c.peak, Entries: len(c.entries), Evictions: c.evicted}
}

// ResetPeak sets the peak to the bytes held now (benchmarks measure per run).
func (c *Cache) ResetPeak() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peak = c.used
}

// get returns k's entry pinned, or creates a pinned entry of size bytes for the caller to fill
// (created true). A created entry has no space yet: the filler reserves it.
func (c *Cache) get(k routing.ExpertKey, size int64) (e *cacheEntry, created bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k]; ok && !e.abandoned {
		e.pins++
		c.policy.Touched(k)
		return e, false
	} else if ok {
		// Its fetch was cancelled and is winding down: replace it (the old entry releases its
		// space when the fetch returns).
		delete(c.entries, k)
		c.policy.Removed(k)
	}
	c.tickets++
	e = &cacheEntry{key: k, size: size, ticket: c.tickets, pins: 1, ready: make(chan struct{})}
	c.entries[k] = e
	c.policy.Inserted(k)
	return e, true
}

// pinIfLive pins e for an Acquire (until Release) if it is still in the cache, in one step: an
// unpinned ready entry can be evicted (and its buffer reused) at any moment until it is pinned.
func (c *Cache) pinIfLive(e *cacheEntry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[e.key] != e || e.abandoned {
		return false
	}
	e.pins++
	c.policy.Touched(e.key)
	return true
}

// gone reports whether e has left the cache (evicted or failed): its want must fetch again.
func (c *Cache) gone(e *cacheEntry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[e.key] != e || e.abandoned
}

// touch marks e as just used (wanted again), so that eviction takes it last.
func (c *Cache) touch(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[e.key] == e {
		c.policy.Touched(e.key)
	}
}

// setCancel records the function that stops e's fetch.
func (c *Cache) setCancel(e *cacheEntry, cancel context.CancelFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.cancel = cancel
}

// unpin removes a user from e; an unpinned entry whose fetch has not finished is abandoned (its
// fetch cancelled, the entry removed), so mispredicted prefetches stop taking bandwidth and space.
func (c *Cache) unpin(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.pins--
	if e.pins > 0 {
		return
	}
	select {
	case <-e.ready:
		if e.abandoned {
			c.removeLocked(e) // discarded while pinned
		} else if e.err == nil {
			c.broadcast() // evictable now
		}
	default:
		if e.cancel != nil {
			e.abandoned = true
			e.cancel()
		}
	}
}

// reserve waits until e's bytes fit, evicting unpinned ready experts, in ticket order. It allocates
// e's device buffer with alloc.
func (c *Cache) reserve(ctx context.Context, e *cacheEntry, alloc func(int64) (DeviceBuffer, error)) error {
	c.mu.Lock()
	if e.size > c.budget {
		c.mu.Unlock()
		return fmt.Errorf("%w: expert %v is %d bytes, the budget %d", ErrCacheTooSmall, e.key, e.size, c.budget)
	}
	c.waiting[e.ticket] = e
	for {
		if c.first() == e.ticket && c.makeRoom(e.size) {
			buf, err := alloc(e.size)
			if err != nil {
				delete(c.waiting, e.ticket)
				c.broadcast()
				c.mu.Unlock()
				return err
			}
			delete(c.waiting, e.ticket)
			e.buf, e.reserved = buf, true
			c.used += e.size
			c.peak = max(c.peak, c.used)
			c.broadcast() // the next waiter may go
			c.mu.Unlock()
			return nil
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			c.mu.Lock()
			delete(c.waiting, e.ticket)
			c.broadcast()
			c.mu.Unlock()
			return ctx.Err()
		}
		c.mu.Lock()
	}
}

// first returns the smallest waiting ticket. The waiting set is small (the experts in flight).
func (c *Cache) first() uint64 {
	var m uint64
	for t := range c.waiting {
		if m == 0 || t < m {
			m = t
		}
	}
	return m
}

// makeRoom evicts until size more bytes fit; false if it cannot.
func (c *Cache) makeRoom(size int64) bool {
	for c.used+size > c.budget {
		k, ok := c.policy.Victim(func(k routing.ExpertKey) bool {
			e := c.entries[k]
			if e == nil || e.pins > 0 || !e.reserved {
				return false
			}
			select {
			case <-e.ready:
				return true
			default:
				return false
			}
		})
		if !ok {
			return false
		}
		c.removeLocked(c.entries[k])
		c.evicted++
	}
	return true
}

// discard takes a ready entry out of the cache (its copy to the device failed after it was handed
// over): at once if unpinned, else once its last user unpins it; meanwhile nobody pins it again, and
// get replaces it.
func (c *Cache) discard(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.abandoned = true
	if e.pins == 0 {
		c.removeLocked(e)
	}
}

// fill completes e: its weights, or the error that every waiter gets. A failed entry leaves the
// cache, so that the next request fetches again; so does an abandoned one, even if its fetch
// finished before the cancel reached it: nobody can pin it again, and once get has replaced it
// in the map nothing else would ever free its bytes (a leak that starved every later reservation).
func (c *Cache) fill(e *cacheEntry, w *engine.ExpertWeights, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.weights, e.err = w, err
	close(e.ready)
	if err != nil || e.abandoned {
		c.removeLocked(e)
	}
	c.broadcast()
}

func (c *Cache) removeLocked(e *cacheEntry) {
	if c.entries[e.key] == e {
		delete(c.entries, e.key)
		c.policy.Removed(e.key)
	}
	if e.reserved {
		c.used -= e.size
		e.reserved = false
		if e.buf != nil {
			e.buf.Free()
		}
	}
	c.broadcast()
}

func (c *Cache) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}
