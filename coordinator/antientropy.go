package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/routing"
)

// Anti-entropy: placement follows what the stores really hold, never what they (or a Copy that
// answered OK) claim. Every AntiEntropyInterval, and at once when a store's incarnation changes (it
// restarted, perhaps with an empty data dir), the leader lists each reachable store's blobs and
//
//   - removes from placement every ready replica whose store does not hold its blob (deleted,
//     quarantined, lost with a disk): the blob is then under-replicated, which status shows, and the
//     same pass copies it back from a replica that has it;
//   - deletes the blobs a store holds that no placement record names on that store (a failed
//     import, a checkpoint that changed, a store back after its replicas were rebuilt elsewhere),
//     once they have stayed unnamed for OrphanGrace: an import in progress is protected by its
//     record (placement.BeginImport), and the grace covers what is in flight otherwise.
//
// Placements are read before the inventories, so a replica that was ready when read and is missing
// from the listing taken after is really missing. Copies that fail are retried with exponential
// backoff and jitter per blob and target, instead of at every pass.

// antiEntropy is what the leader remembers between passes. It is reset when leadership begins.
type antiEntropy struct {
	mu      sync.Mutex
	last    time.Time               // the last inventory
	epochs  map[string]uint64       // each store's incarnation at the last inventory
	orphans map[storeBlob]time.Time // unnamed blobs: since when
	retries map[copyKey]*retry      // failed copies: when to try again
}

// copyKey is one planned copy: a blob (its item key) to a store.
type copyKey struct{ item, to string }

type retry struct {
	b    *backoff.ExponentialBackOff
	next time.Time
}

func newAntiEntropy() *antiEntropy {
	return &antiEntropy{epochs: map[string]uint64{}, orphans: map[storeBlob]time.Time{}, retries: map[copyKey]*retry{}}
}

// due reports whether an inventory should run now: the interval has passed, or a live store's
// incarnation differs from the one the last inventory saw.
func (a *antiEntropy) due(now time.Time, every time.Duration, views map[string]storeView) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if now.Sub(a.last) >= every {
		return true
	}
	for name, v := range views {
		// A store that answered its probe (alive, or suspect while gossip settles after a restart)
		// with an incarnation the last inventory did not see.
		answered := v.rec.State == placement.StoreAlive || v.rec.State == placement.StoreSuspect
		if e, ok := a.epochs[name]; v.live && answered && (!ok || e != v.rec.Epoch) {
			return true
		}
	}
	return false
}

// deferred reports whether the copy of item to store waits for its backoff, and until when.
func (a *antiEntropy) deferred(k copyKey, now time.Time) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.retries[k]
	if r == nil || !now.Before(r.next) {
		return time.Time{}, false
	}
	return r.next, true
}

// copied records the outcome of a copy and, for a failure, returns how long until the next try.
func (a *antiEntropy) copied(k copyKey, err error, now time.Time) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.retries, k)
		return 0
	}
	r := a.retries[k]
	if r == nil {
		b := backoff.NewExponentialBackOff()
		b.InitialInterval, b.MaxInterval, b.Multiplier, b.RandomizationFactor = 500*time.Millisecond, 30*time.Second, 2, 0.5
		r = &retry{b: b}
		a.retries[k] = r
	}
	d := r.b.NextBackOff()
	r.next = now.Add(d)
	return d
}

// inventory is what the reachable stores hold: store → the digests it holds.
type inventory map[string]map[blob.Digest]bool

// takeInventory lists the blobs of every live store that answers.
func (c *Coordinator) takeInventory(ctx context.Context, views map[string]storeView) inventory {
	type listing struct {
		store string
		blobs []client.BlobInfo
		err   error
	}
	results := make(chan listing, len(views))
	n := 0
	for name, v := range views {
		if !v.live || v.rec.GRPCAddr == "" || v.rec.State == placement.StoreDead || v.rec.State == placement.StoreStopped {
			continue
		}
		n++
		go func() {
			lctx, cancel := context.WithTimeout(ctx, 10*probeTimeout)
			defer cancel()
			bs, err := c.stores.List(lctx, v.replica(), "")
			results <- listing{name, bs, err}
		}()
	}
	inv := inventory{}
	now := time.Now()
	c.ae.mu.Lock()
	defer c.ae.mu.Unlock()
	for range n {
		l := <-results
		if l.err != nil {
			c.log.Warn("inventory: store did not answer List", "store", l.store, "err", l.err)
			continue
		}
		held := make(map[blob.Digest]bool, len(l.blobs))
		for _, b := range l.blobs {
			held[b.Digest] = true
		}
		inv[l.store] = held
		c.ae.epochs[l.store] = views[l.store].rec.Epoch
	}
	c.ae.last = now
	return inv
}

// dropMissing removes from placement the ready replicas that the inventory shows their store does
// not hold, one guarded Txn per blob, and updates blobs to what it wrote. It returns how many
// replicas it removed.
func (c *Coordinator) dropMissing(ctx context.Context, guard clientv3.Cmp, blobs []*blobState, inv inventory) (int, error) {
	removed := 0
	for _, b := range blobs {
		missing := func(r routing.Replica) bool {
			held, listed := inv[r.Store]
			return r.Ready() && listed && !held[b.rec.Digest]
		}
		if !slices.ContainsFunc(b.rec.Replicas, missing) {
			continue
		}
		next := b.rec
		next.Replicas = slices.DeleteFunc(slices.Clone(b.rec.Replicas), missing)
		next.Epoch++
		next.Writer = c.cfg.Name
		rev, err := c.ps.ApplyIfRev(ctx, guard, []placement.Change{{Key: b.etcdKey, Placement: &next, ModRevision: b.rev}})
		if err != nil {
			return removed, fmt.Errorf("marking missing replicas of %s: %w", b.item.Key, err)
		}
		n := len(b.rec.Replicas) - len(next.Replicas)
		removed += n
		c.metrics.missing.Add(int64(n))
		c.log.Warn("replicas missing from their stores: removed from placement, to be copied back",
			"blob", b.item.Key, "digest", b.rec.Digest, "removed", n, "left", len(next.Replicas))
		b.rec, b.rev = next, rev
	}
	return removed, nil
}

// collectOrphans deletes the blobs that stores hold and no placement names there (refs), nor an
// import in progress, once they have stayed so for OrphanGrace. It returns how many it deleted.
func (c *Coordinator) collectOrphans(ctx context.Context, views map[string]storeView, inv inventory, refs map[storeBlob]int) (int, error) {
	importing, err := c.ps.Importing(ctx)
	if err != nil {
		return 0, err
	}
	now := time.Now()
	var expired []storeBlob
	c.ae.mu.Lock()
	seen := map[storeBlob]bool{}
	for store, held := range inv {
		for d := range held {
			k := storeBlob{store, d}
			if refs[k] > 0 || importing[d] {
				continue
			}
			seen[k] = true
			since, ok := c.ae.orphans[k]
			if !ok {
				c.ae.orphans[k] = now
				continue
			}
			if now.Sub(since) >= c.cfg.OrphanGrace {
				expired = append(expired, k)
			}
		}
	}
	for k := range c.ae.orphans {
		if _, listed := inv[k.store]; listed && !seen[k] {
			delete(c.ae.orphans, k) // named again, or gone
		}
	}
	c.ae.mu.Unlock()
	deleted := 0
	for _, k := range expired {
		if _, err := c.stores.Delete(ctx, views[k.store].replica(), k.digest); err != nil {
			c.log.Warn("deleting an unreferenced blob", "store", k.store, "digest", k.digest, "err", err)
			continue
		}
		c.ae.mu.Lock()
		delete(c.ae.orphans, k)
		c.ae.mu.Unlock()
		deleted++
		c.metrics.orphans.Add(1)
		c.log.Info("deleted a blob no placement names", "store", k.store, "digest", k.digest, "grace", c.cfg.OrphanGrace)
	}
	return deleted, nil
}

// verifyCopy checks that store to really holds d after a Copy said it does: a store's word is not
// enough to mark a replica ready.
func (c *Coordinator) verifyCopy(ctx context.Context, to routing.Replica, d blob.Digest) error {
	ctx, cancel := context.WithTimeout(ctx, 5*probeTimeout)
	defer cancel()
	has, err := c.stores.Has(ctx, to, d)
	if err != nil {
		return fmt.Errorf("checking the copy: %w", err)
	}
	if !has[0] {
		return fmt.Errorf("store %s answered the copy of %s but does not hold it", to.Store, d)
	}
	return nil
}
