package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// probeTimeout bounds the Stats call that tells a live store from a suspect one.
const probeTimeout = time.Second

// PassReport says what one reconcile pass saw and did.
type PassReport struct {
	Started      time.Time     `json:"started"`
	Duration     time.Duration `json:"duration"`
	Stores       int           `json:"stores"`        // stores with a record or in gossip
	LiveStores   int           `json:"live_stores"`   // alive, suspect, or dead within the grace
	TargetStores int           `json:"target_stores"` // live and not draining: what placement uses
	Blobs        int           `json:"blobs"`
	Copies       int           `json:"copies"`
	CopyErrors   int           `json:"copy_errors"`
	CopiedBytes  int64         `json:"copied_bytes"`
	Drops        int           `json:"drops"`
	Writes       int           `json:"writes"` // placement records written
	// After the pass: blobs with fewer ready replicas on live stores than min(R, target stores),
	// and blobs with none.
	UnderReplicated int    `json:"under_replicated"`
	Unavailable     int    `json:"unavailable"`
	PlaceError      string `json:"place_error,omitempty"`
	// Anti-entropy: stores whose blobs were listed (0 when no inventory ran this pass), ready
	// replicas removed because their store did not hold them, unreferenced blobs deleted.
	Inventoried     int `json:"inventoried"`
	MissingReplicas int `json:"missing_replicas"`
	OrphansDeleted  int `json:"orphans_deleted"`
	// CopiesDeferred counts blobs whose copy waits for its backoff after failing; NextRetry is the
	// earliest such retry.
	CopiesDeferred int       `json:"copies_deferred"`
	NextRetry      time.Time `json:"next_retry,omitzero"`
	// Settling: a store joined less than JoinSettle ago, so moves that only rebalance wait.
	Settling bool `json:"settling,omitempty"`
}

// Pending reports whether the pass changed something, so that another pass should follow soon
// (to confirm the cluster converged rather than wait for the next tick).
func (r PassReport) Pending() bool { return r.Copies > 0 || r.Drops > 0 || r.Writes > 0 }

// seenStore is what the coordinator remembers of a store between passes.
type seenStore struct {
	joined, since time.Time
	state         string
}

// storeView is one store as a pass sees it.
type storeView struct {
	rec      placement.StoreRecord
	draining bool
	live     bool // may be copied from and kept in placement
	target   bool // may be given blobs
}

func (v storeView) replica() routing.Replica {
	return routing.Replica{Store: v.rec.Name, State: routing.ReplicaReady, GRPCAddr: v.rec.GRPCAddr, DataAddr: v.rec.DataAddr}
}

// storeBlob is a blob on a store.
type storeBlob struct {
	store  string
	digest blob.Digest
}

// blobState is one placement record as a pass sees it.
type blobState struct {
	etcdKey string
	item    routing.Item
	rec     placement.Placement
	rev     int64
}

// ItemKey is the key a blob is hashed by in placement: its etcd key without the cluster prefix
// ("models/<model>/placement/00003/00007"), so that importer and coordinator agree and renaming
// the cluster moves nothing.
func ItemKey(ps *placement.Store, etcdKey string) string {
	return strings.TrimPrefix(etcdKey, ps.Prefix())
}

// reconcile runs one pass: observe the stores, compute the target placement, and move blobs
// toward it, every write guarded by guard.
func (c *Coordinator) reconcile(ctx context.Context, guard clientv3.Cmp) (rep PassReport, err error) {
	rep.Started = time.Now()
	defer func() {
		rep.Duration = time.Since(rep.Started)
		c.metrics.passSeconds.Observe(rep.Duration.Seconds())
		c.metrics.under.Set(float64(rep.UnderReplicated))
		c.metrics.lost.Set(float64(rep.Unavailable))
	}()

	views, err := c.observeStores(ctx)
	if err != nil {
		return rep, err
	}
	rep.Stores = len(views)
	live := map[string]bool{}
	var targets []routing.Store
	for name, v := range views {
		if v.live {
			live[name] = true
			rep.LiveStores++
		}
		if v.target {
			targets = append(targets, routing.Store{Name: name, Capacity: v.rec.Capacity})
			rep.TargetStores++
		}
	}

	blobs, err := c.readBlobs(ctx)
	if err != nil {
		return rep, err
	}
	rep.Blobs = len(blobs)
	// Anti-entropy (antientropy.go): placements were read above, the inventories are taken now.
	var inv inventory
	if c.ae.due(time.Now(), c.cfg.AntiEntropyInterval, views) {
		inv = c.takeInventory(ctx, views)
		rep.Inventoried = len(inv)
		if rep.MissingReplicas, err = c.dropMissing(ctx, guard, blobs, inv); err != nil {
			return rep, err
		}
		rep.Writes += rep.MissingReplicas
	}
	items := make([]routing.Item, len(blobs))
	sizes := make(map[string]int64, len(blobs))
	current := make(routing.Assignment, len(blobs))
	refs := map[storeBlob]int{} // placement records naming a blob on a store
	for i, b := range blobs {
		items[i] = b.item
		sizes[b.item.Key] = b.item.Size
		current[b.item.Key] = b.rec.Ready()
		for _, r := range b.rec.Replicas {
			refs[storeBlob{r.Store, b.rec.Digest}]++
		}
	}
	// Unreferenced blobs go before any copy of this pass: a copy made after the collection never
	// meets it, and one made before it is named by a record read above (marked copying first).
	if inv != nil {
		if rep.OrphansDeleted, err = c.collectOrphans(ctx, views, inv, refs); err != nil {
			return rep, err
		}
	}
	target, perr := routing.Place(items, targets, c.cfg.Replicas)
	if perr != nil {
		if !errors.Is(perr, routing.ErrNoCapacity) {
			return rep, perr
		}
		rep.PlaceError = perr.Error()
		c.log.Warn("placement short of capacity", "err", perr)
	}
	moves, lost := routing.Plan(current, target, sizes, live)
	if len(lost) > 0 {
		c.log.Error("blobs with no live replica", "count", len(lost), "first", lost[0])
	}
	copies, drops := map[string][]routing.Move{}, map[string][]string{}
	deferred := map[string]bool{} // blobs with a copy waiting for its backoff: no move this pass
	now := time.Now()
	for _, m := range moves {
		if m.Drop {
			drops[m.Key] = append(drops[m.Key], m.To)
			continue
		}
		copies[m.Key] = append(copies[m.Key], m)
		if next, ok := c.ae.deferred(copyKey{m.Key, m.To}, now); ok {
			deferred[m.Key] = true
			if rep.NextRetry.IsZero() || next.Before(rep.NextRetry) {
				rep.NextRetry = next
			}
		}
	}
	want := min(c.cfg.Replicas, len(targets))
	// Stores that joined moments ago may be the first of several (a StatefulSet scaled from 3 to
	// 5 starts its pods one by one): moving blobs that lack nothing onto the first, then again
	// onto the next, would copy much more than the minimum. Those moves wait until no store has
	// joined for JoinSettle; repairs of blobs short of replicas do not wait.
	if settle := c.settlingUntil(views, now); !settle.IsZero() {
		rep.Settling = true
		for _, b := range blobs {
			if len(copies[b.item.Key]) > 0 && liveReady(b.rec, live) >= want {
				deferred[b.item.Key] = true
			}
		}
		if rep.NextRetry.IsZero() || settle.Before(rep.NextRetry) {
			rep.NextRetry = settle
		}
	}
	rep.CopiesDeferred = len(deferred)

	var mu sync.Mutex // guards rep and copyErr from the key goroutines
	var copyErr error // the first copy that failed (one warning per pass, not one per copy)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.cfg.CopyParallelism)
	for _, b := range blobs {
		key := b.item.Key
		if deferred[key] || len(copies[key]) == 0 && len(drops[key]) == 0 && !needsCleanup(b.rec, live, want) {
			ready := liveReady(b.rec, live)
			mu.Lock()
			rep.countHealth(ready, want)
			mu.Unlock()
			continue
		}
		g.Go(func() error {
			res, err := c.moveBlob(gctx, guard, b, copies[key], drops[key], target[key], views, live, want, refs)
			mu.Lock()
			defer mu.Unlock()
			rep.Copies += res.copies
			rep.CopyErrors += res.copyErrors
			copyErr = cmp.Or(copyErr, res.copyErr)
			rep.CopiedBytes += res.copiedBytes
			rep.Drops += res.drops
			rep.Writes += res.writes
			rep.countHealth(res.liveReady, want)
			if errors.Is(err, placement.ErrNotLeader) || gctx.Err() != nil {
				return err // stop the pass
			}
			if err != nil {
				c.log.Warn("move", "blob", key, "err", err)
			}
			return nil
		})
	}
	err = g.Wait()
	if copyErr != nil && ctx.Err() == nil {
		c.log.Warn("copies failed; each is retried with backoff", "failed", rep.CopyErrors, "copied", rep.Copies, "first", copyErr)
	}
	if err == nil {
		err = c.forgetStores(ctx, views, refs)
	}
	return rep, err
}

// settlingUntil returns when the newest target store's JoinSettle ends, zero when none is
// settling.
func (c *Coordinator) settlingUntil(views map[string]storeView, now time.Time) time.Time {
	if c.cfg.JoinSettle <= 0 {
		return time.Time{}
	}
	var until time.Time
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, v := range views {
		s, ok := c.seen[name]
		if !v.target || !ok {
			continue
		}
		if end := s.joined.Add(c.cfg.JoinSettle); end.After(now) && end.After(until) {
			until = end
		}
	}
	return until
}

func (r *PassReport) countHealth(liveReady, want int) {
	if liveReady < want {
		r.UnderReplicated++
	}
	if liveReady == 0 {
		r.Unavailable++
	}
}

// liveReady counts rec's ready replicas on live stores.
func liveReady(rec placement.Placement, live map[string]bool) int {
	n := 0
	for _, r := range rec.Replicas {
		if r.Ready() && live[r.Store] {
			n++
		}
	}
	return n
}

// needsCleanup reports whether rec holds entries to remove although nothing moves: a copy that a
// previous leader started and never finished, or a replica on a store gone past its grace while
// enough live ones remain.
func needsCleanup(rec placement.Placement, live map[string]bool, want int) bool {
	enough := liveReady(rec, live) >= want
	for _, r := range rec.Replicas {
		if r.State == routing.ReplicaCopying || !live[r.Store] && enough {
			return true
		}
	}
	return false
}

// readBlobs reads every published model's placement records (experts and dense blobs).
func (c *Coordinator) readBlobs(ctx context.Context) ([]*blobState, error) {
	models, err := c.ps.Models(ctx)
	if err != nil {
		return nil, err
	}
	var out []*blobState
	for _, m := range models {
		ps, revs, _, err := c.ps.Placements(ctx, m)
		if err != nil {
			return nil, err
		}
		for k, p := range ps {
			key := c.ps.ExpertKey(m, k)
			out = append(out, &blobState{etcdKey: key, item: routing.Item{Key: ItemKey(c.ps, key), Size: p.Size}, rec: p, rev: revs[k]})
		}
		dps, drevs, _, err := c.ps.DensePlacements(ctx, m)
		if err != nil {
			return nil, err
		}
		for name, p := range dps {
			key := c.ps.DenseKey(m, name)
			out = append(out, &blobState{etcdKey: key, item: routing.Item{Key: ItemKey(c.ps, key), Size: p.Size}, rec: p, rev: drevs[name]})
		}
	}
	slices.SortFunc(out, func(a, b *blobState) int { return strings.Compare(a.etcdKey, b.etcdKey) })
	return out, nil
}

type moveResult struct {
	copies, copyErrors, drops, writes, liveReady int
	copiedBytes                                  int64
	copyErr                                      error // the first copy that failed
}

// moveBlob carries out one blob's moves: the copies (marked copying in etcd first, so that status
// shows them and a successor leader knows), then one Txn that marks the copies that succeeded ready
// and, only if all did, drops the replicas the plan removes; then the blobs are deleted from the
// dropped stores. Ready replicas therefore only grow until the new ones are ready.
func (c *Coordinator) moveBlob(ctx context.Context, guard clientv3.Cmp, b *blobState, copies []routing.Move,
	drops []string, order []string, views map[string]storeView, live map[string]bool, want int, refs map[storeBlob]int,
) (res moveResult, err error) {
	rec, rev := b.rec, b.rev
	res.liveReady = liveReady(rec, live)
	if len(copies) > 0 {
		marked := rec
		marked.Replicas = slices.Clone(rec.Replicas)
		for _, m := range copies {
			if i := slices.IndexFunc(marked.Replicas, func(r routing.Replica) bool { return r.Store == m.To }); i >= 0 {
				marked.Replicas[i].State = routing.ReplicaCopying
			} else {
				marked.Replicas = append(marked.Replicas, routing.Replica{Store: m.To, State: routing.ReplicaCopying})
			}
		}
		marked.Epoch++
		marked.Writer = c.cfg.Name
		if rev, err = c.ps.ApplyIfRev(ctx, guard, []placement.Change{{Key: b.etcdKey, Placement: &marked, ModRevision: rev}}); err != nil {
			return res, err
		}
		res.writes++
		rec = marked
	}

	copied := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			existed, err := c.copyBlob(ctx, rec, m, views)
			if err == nil {
				err = c.verifyCopy(ctx, views[m.To].replica(), rec.Digest)
			}
			retryIn := c.ae.copied(copyKey{b.item.Key, m.To}, err, time.Now())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.copyErrors++
				c.metrics.copyErrors.Add(1)
				if res.copyErr == nil {
					res.copyErr = fmt.Errorf("copy of %s to %s: %w", b.item.Key, m.To, err)
				}
				c.log.Debug("copy failed", "blob", b.item.Key, "to", m.To, "retry_in", retryIn.Round(time.Millisecond), "err", err)
				return
			}
			copied[m.To] = true
			res.copies++
			c.metrics.copies.Add(1)
			if existed {
				return // the store had the bytes (a copy an interrupted pass made, an orphan): none moved
			}
			res.copiedBytes += rec.Size
			c.metrics.copiedBytes.Add(rec.Size)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	allCopied := len(copied) == len(copies)
	dropped := map[string]bool{}
	final := rec
	final.Replicas = nil
	for _, r := range rec.Replicas {
		switch {
		case copied[r.Store]:
			r.State = routing.ReplicaReady
		case r.State == routing.ReplicaCopying:
			continue // failed now, or left over from an earlier leader
		case slices.Contains(drops, r.Store) && allCopied:
			dropped[r.Store] = true
			continue
		}
		final.Replicas = append(final.Replicas, r)
	}
	if liveReady(final, live) >= want {
		final.Replicas = slices.DeleteFunc(final.Replicas, func(r routing.Replica) bool { return !live[r.Store] })
	}
	// Target order first (it is the fetch preference), the rest after.
	rank := func(s string) int {
		if i := slices.Index(order, s); i >= 0 {
			return i
		}
		return len(order)
	}
	slices.SortStableFunc(final.Replicas, func(a, b routing.Replica) int { return cmp.Compare(rank(a.Store), rank(b.Store)) })
	res.liveReady = liveReady(final, live)
	if slices.Equal(final.Replicas, rec.Replicas) {
		return res, nil
	}
	final.Epoch++
	final.Writer = c.cfg.Name
	if err := c.ps.ApplyIf(ctx, guard, []placement.Change{{Key: b.etcdKey, Placement: &final, ModRevision: rev}}); err != nil {
		res.liveReady = liveReady(b.rec, live)
		return res, err
	}
	res.writes++
	for store := range dropped {
		res.drops++
		if refs[storeBlob{store, rec.Digest}] > 1 {
			continue // another record names the same bytes on that store
		}
		if err := c.deleteBlob(ctx, views[store], rec.Digest); err != nil {
			c.log.Warn("delete after drop", "blob", b.item.Key, "store", store, "err", err)
		}
	}
	return res, nil
}

// copyBlob has store m.To copy rec's blob from the live stores in m.From. It reports whether the
// store had the blob already (then no bytes moved).
func (c *Coordinator) copyBlob(ctx context.Context, rec placement.Placement, m routing.Move, views map[string]storeView) (bool, error) {
	to, ok := views[m.To]
	if !ok {
		return false, fmt.Errorf("no address for store %q", m.To)
	}
	var sources []routing.Replica
	for _, s := range m.From {
		if v, ok := views[s]; ok && v.live {
			sources = append(sources, v.replica())
		}
	}
	if len(sources) == 0 {
		return false, fmt.Errorf("no live source for %s", rec.Digest)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CopyTimeout)
	defer cancel()
	return c.stores.Copy(ctx, to.replica(), client.Ref{Digest: rec.Digest, Size: rec.Size}, sources)
}

func (c *Coordinator) deleteBlob(ctx context.Context, v storeView, d blob.Digest) error {
	if !v.live || v.rec.GRPCAddr == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout*5)
	defer cancel()
	_, err := c.stores.Delete(ctx, v.replica(), d)
	return err
}

// observeStores merges gossip, the records in etcd and a Stats probe of every store into one view
// per store, and writes the records that changed.
//
// A store is live when gossip says alive or it answers the probe (a coordinator that has just
// started may not have heard every store's gossip yet; the probe keeps it from mistaking them for
// dead), or it has been dead for less than DeadGrace, or stopped (a restart) for less than
// RestartGrace.
func (c *Coordinator) observeStores(ctx context.Context) (map[string]storeView, error) {
	recs, err := c.ps.Stores(ctx)
	if err != nil {
		return nil, err
	}
	drains, err := c.ps.Drains(ctx)
	if err != nil {
		return nil, err
	}
	old := map[string]placement.StoreRecord{}
	cands := map[string]placement.StoreRecord{}
	gossip := map[string]membership.State{}
	for _, r := range recs {
		old[r.Name] = r
		cands[r.Name] = r
	}
	if c.member != nil {
		for _, n := range c.member.Members() {
			if n.Meta.Role != membership.RoleStore {
				continue
			}
			gossip[n.Name] = n.State
			r := cands[n.Name]
			r.Name, r.GossipAddr = n.Name, n.Addr
			if n.Meta.GRPCAddr != "" {
				r.GRPCAddr, r.DataAddr, r.Capacity, r.Epoch = n.Meta.GRPCAddr, n.Meta.DataAddr, n.Meta.Capacity, n.Meta.Epoch
				r.Used, r.Blobs = n.Meta.Used, n.Meta.Blobs
			}
			cands[n.Name] = r
		}
	}

	// Probe every store in parallel.
	type probe struct {
		name  string
		stats *client.StoreStats
	}
	results := make(chan probe, len(cands))
	for name, r := range cands {
		go func() {
			if r.GRPCAddr == "" || gossip[name] == membership.StateLeft || gossip[name] == membership.StateStopped {
				results <- probe{name: name}
				return
			}
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			st, err := c.stores.Stats(pctx, routing.Replica{Store: name, GRPCAddr: r.GRPCAddr, DataAddr: r.DataAddr})
			if err != nil || st.Node != name {
				results <- probe{name: name}
				return
			}
			// With TLS, a store is who its certificate says, not who it gossips it is: a node
			// whose certificate is not the store's of that name is never taken as answering.
			if c.cfg.TLS != nil && st.Identity != (tlsutil.Identity{Role: tlsutil.RoleStore, Name: name}) {
				c.log.Warn("a store's certificate does not name it: not a placement target", "store", name, "certificate", st.Identity)
				results <- probe{name: name}
				return
			}
			results <- probe{name: name, stats: &st}
		}()
	}
	stats := map[string]*client.StoreStats{}
	for range cands {
		p := <-results
		stats[p.name] = p.stats
	}

	now := time.Now().UTC()
	views := make(map[string]storeView, len(cands))
	var writes []placement.StoreRecord
	c.mu.Lock()
	for name, r := range cands {
		st, answered := stats[name], stats[name] != nil
		gs, inGossip := gossip[name]
		state := placement.StoreDead
		switch {
		case answered && inGossip && gs == membership.StateAlive:
			state = placement.StoreAlive
		case answered || inGossip && gs == membership.StateAlive:
			state = placement.StoreSuspect
		case inGossip && gs == membership.StateLeft:
			state = placement.StoreLeft
		case inGossip && gs == membership.StateStopped:
			state = placement.StoreStopped
		case !inGossip && (old[name].State == placement.StoreLeft || old[name].State == placement.StoreStopped):
			state = old[name].State // a coordinator that started since: the record knows
		}
		if answered {
			r.Verified = true
			r.Capacity, r.Used, r.Blobs, r.Epoch = st.CapacityBytes, st.UsedBytes, st.Blobs, st.Epoch
			if st.DataAddr != "" {
				r.DataAddr = st.DataAddr
			}
		}
		if capped := c.cfg.MaxStoreCapacity; capped > 0 && r.Capacity > capped {
			r.Capacity = capped
		}
		s, ok := c.seen[name]
		if !ok {
			s = seenStore{joined: cmp.Or(old[name].Joined, now), since: now, state: state}
			if old[name].State == state && !old[name].Since.IsZero() {
				s.since = old[name].Since
			}
		}
		if s.state != state {
			s.state, s.since = state, now
			c.log.Info("store state", "store", name, "state", state)
		}
		c.seen[name] = s
		r.State, r.Joined, r.Since = state, s.joined, s.since
		live := state == placement.StoreAlive || state == placement.StoreSuspect ||
			state == placement.StoreDead && now.Sub(s.since) < c.cfg.DeadGrace ||
			state == placement.StoreStopped && now.Sub(s.since) < c.cfg.RestartGrace
		// A store dead for less than the grace stays a target: placement is computed over the same
		// stores as before it went, so nothing moves unless it stays away (a restarting cluster,
		// whose stores rejoin one by one while the records still hold their old addresses, must not
		// shrink every blob onto the first store back).
		views[name] = storeView{rec: r, draining: drains[name], live: live,
			target: live && !drains[name] && r.Capacity > 0 && (c.cfg.TLS == nil || r.Verified)}
		if o, had := old[name]; !had || recordChanged(o, r) {
			r.Updated = now
			writes = append(writes, r)
		}
	}
	c.mu.Unlock()
	for _, r := range writes {
		if err := c.ps.PutStore(ctx, r, clientv3.NoLease); err != nil {
			return nil, err
		}
	}
	return views, nil
}

func recordChanged(a, b placement.StoreRecord) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	return a != b
}

// forgetStores deletes the records of stores that left, or went down after a drain (a removal), or
// stopped and stayed away past the restart grace, and that no placement names any more.
func (c *Coordinator) forgetStores(ctx context.Context, views map[string]storeView, refs map[storeBlob]int) error {
	named := map[string]bool{}
	for k := range refs {
		named[k.store] = true
	}
	for name, v := range views {
		// Left: gone for good. Stopped or dead after a drain: removed as the operator meant (the
		// stopping flag may not have reached this coordinator before the store went). Stopped
		// past the restart grace: not coming back. A store that died otherwise keeps its record
		// (status shows it dead) until it returns or is drained.
		down := v.rec.State == placement.StoreStopped || v.rec.State == placement.StoreDead
		gone := v.rec.State == placement.StoreLeft || down && v.draining ||
			v.rec.State == placement.StoreStopped && !v.live
		if gone && !named[name] {
			if err := c.ps.DeleteStore(ctx, name); err != nil {
				return err
			}
			c.mu.Lock()
			delete(c.seen, name)
			c.mu.Unlock()
		}
	}
	return nil
}
