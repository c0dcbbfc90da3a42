package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/atomicfile"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/routing"
)

// clusterView keeps what a worker needs of the cluster's state, fresh: the model's placements, with
// the addresses and health of the stores they name, as one immutable routing.Snapshot (swapped
// atomically: fetches read it without locks). A new snapshot is built per batch of placement watch
// events and whenever the store records change.
type clusterView struct {
	ps     *placement.Store
	model  string
	log    *slog.Logger
	snap   atomic.Pointer[routing.Snapshot]
	synced atomic.Bool // a first full read of placements and stores is in

	mu      sync.Mutex // the inputs of the next snapshot
	rev     int64
	experts map[routing.ExpertKey]routing.Entry
	dense   map[string]routing.Entry
	stores  map[string]routing.StoreAddr
}

func newClusterView(ps *placement.Store, model string, log *slog.Logger) *clusterView {
	return &clusterView{ps: ps, model: model, log: log, experts: map[routing.ExpertKey]routing.Entry{},
		dense: map[string]routing.Entry{}}
}

// publish builds and publishes a snapshot of the current inputs. Caller holds v.mu.
func (v *clusterView) publish() {
	v.snap.Store(routing.NewSnapshot(v.rev, routing.Placements{Experts: v.experts, Dense: v.dense}, v.stores))
}

// run keeps the view fresh until ctx ends: list, then watch placements (re-listing after a watch
// breaks); store records are re-read every storeEvery.
func (v *clusterView) run(ctx context.Context, storeEvery time.Duration) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if err := v.readStores(ctx); err != nil && ctx.Err() == nil {
				v.log.Warn("reading store records", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(storeEvery):
			}
		}
	})
	for ctx.Err() == nil {
		if err := v.syncPlacements(ctx); err != nil && ctx.Err() == nil {
			v.log.Warn("placement watch", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	wg.Wait()
}

// readStores reads the store records and, when an address or a store's health changed, publishes
// a snapshot with them.
func (v *clusterView) readStores(ctx context.Context) error {
	recs, err := v.ps.Stores(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]routing.StoreAddr, len(recs))
	for _, r := range recs {
		m[r.Name] = routing.StoreAddr{GRPCAddr: r.GRPCAddr, DataAddr: r.DataAddr, Healthy: r.State == placement.StoreAlive}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stores == nil || !maps.Equal(v.stores, m) {
		v.stores = m
		v.publish()
	}
	return nil
}

// syncPlacements lists the model's placements, publishes a snapshot, then applies the watch's
// events until it breaks.
func (v *clusterView) syncPlacements(ctx context.Context) error {
	exp, _, rev, err := v.ps.Placements(ctx, v.model)
	if err != nil {
		return err
	}
	dense, _, _, err := v.ps.DensePlacements(ctx, v.model)
	if err != nil {
		return err
	}
	if err := v.readStores(ctx); err != nil {
		return err
	}
	v.mu.Lock()
	clear(v.experts)
	clear(v.dense)
	for k, p := range exp {
		v.experts[k] = entryOf(p)
	}
	for n, p := range dense {
		v.dense[n] = entryOf(p)
	}
	v.rev = rev
	v.publish()
	v.mu.Unlock()
	v.synced.Store(true)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := v.ps.WatchPlacements(wctx, v.model, rev+1)
	for ev := range events {
		// Apply every event already queued, then publish one snapshot.
		v.mu.Lock()
		for {
			switch {
			case ev.Dense != "" && ev.Placement == nil:
				delete(v.dense, ev.Dense)
			case ev.Dense != "":
				v.dense[ev.Dense] = entryOf(*ev.Placement)
			case ev.Placement == nil:
				delete(v.experts, ev.Expert)
			default:
				v.experts[ev.Expert] = entryOf(*ev.Placement)
			}
			v.rev = ev.Revision
			select {
			case next, ok := <-events:
				if ok {
					ev = next
					continue
				}
			default:
			}
			break
		}
		v.publish()
		v.mu.Unlock()
	}
	return errors.New("placement watch ended")
}

func entryOf(p placement.Placement) routing.Entry {
	return routing.Entry{Digest: p.Digest, Size: p.Size, Replicas: p.Replicas}
}

// holds reports whether the view's snapshot has a placement for every blob of man.
func (v *clusterView) holds(man placement.Manifest) bool {
	snap := v.snap.Load()
	for _, e := range man.Experts {
		if snap.Expert(e.ExpertKey) == nil {
			return false
		}
	}
	for _, d := range man.Dense {
		if snap.Dense(d.Name) == nil {
			return false
		}
	}
	return true
}

// choose returns the replicas of the entry lookup finds in the current snapshot, in the order to
// try them. When a ready replica's store has no known address yet (it joined since the store
// records were read), the records are read again first.
func (v *clusterView) choose(ctx context.Context, lookup func(*routing.Snapshot) *routing.Entry, seed uint64) (*routing.Entry, []routing.Replica) {
	e := lookup(v.snap.Load())
	if e != nil && e.Unresolved() && v.readStores(ctx) == nil {
		e = lookup(v.snap.Load())
	}
	if e == nil {
		return nil, nil
	}
	return e, e.Choose(seed)
}

// clusterFetcher fetches expert blobs from the stores placement names: per fetch, one snapshot
// lookup (digest, size, replicas with addresses) and one client.Fetch.
type clusterFetcher struct {
	view *clusterView
	cl   *client.Client
	name string
	seed uint64
	// The manifest's experts, [block][expert]: what the loaded model expects each blob to be.
	want [][]placement.ExpertEntry
	// observe, when set, records each fetch's outcome and duration (failovers and retries
	// included).
	observe func(d time.Duration, err error)
}

func newClusterFetcher(view *clusterView, cl *client.Client, man placement.Manifest, seed uint64) *clusterFetcher {
	f := &clusterFetcher{view: view, cl: cl, name: man.Name, seed: seed, want: make([][]placement.ExpertEntry, man.Blocks)}
	for _, e := range man.Experts {
		f.want[e.Block] = append(f.want[e.Block], e)
	}
	return f
}

// entry returns the manifest's entry for k.
func (f *clusterFetcher) entry(k routing.ExpertKey) (placement.ExpertEntry, bool) {
	if k.Block < 0 || k.Block >= len(f.want) || k.Expert < 0 || k.Expert >= len(f.want[k.Block]) {
		return placement.ExpertEntry{}, false
	}
	return f.want[k.Block][k.Expert], true
}

// Size implements Fetcher.
func (f *clusterFetcher) Size(k routing.ExpertKey) int64 {
	e, _ := f.entry(k)
	return e.Size
}

// Fetch implements Fetcher.
func (f *clusterFetcher) Fetch(ctx context.Context, k routing.ExpertKey, dst []byte) error {
	if f.observe == nil {
		return f.fetch(ctx, k, dst)
	}
	start := time.Now()
	err := f.fetch(ctx, k, dst)
	if ctx.Err() == nil { // a fetch cancelled (a speculation dropped, a step ended) is neither
		f.observe(time.Since(start), err)
	}
	return err
}

func (f *clusterFetcher) fetch(ctx context.Context, k routing.ExpertKey, dst []byte) error {
	snap := f.view.snap.Load()
	ref, reps, err := f.resolve(ctx, k)
	if err == nil {
		err = f.cl.Fetch(ctx, ref, reps, dst)
	}
	if err == nil || ctx.Err() != nil {
		return err
	}
	// Every replica failed. A rebalance may have moved the expert and deleted it where this fetch
	// looked: the coordinator deletes right after its Txn, and the watch event that tells this worker
	// can come a moment later. Try again at each newer placement for a second: during a rebalance
	// the next placement may be another blob's move and still name the old replicas of this one
	// (a scale-in in the fault suite failed 1 request of 660 when this tried only once).
	deadline := time.Now().Add(time.Second)
	for errors.Is(err, storepb.ErrNotFound) {
		for f.view.snap.Load() == snap && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return err
			case <-time.After(10 * time.Millisecond):
			}
		}
		if f.view.snap.Load() == snap {
			return err
		}
		snap = f.view.snap.Load()
		if ref, reps, err = f.resolve(ctx, k); err != nil {
			return err
		}
		err = f.cl.Fetch(ctx, ref, reps, dst)
	}
	return err
}

// resolve looks expert k up in the current snapshot: the blob to fetch and the replicas to try.
func (f *clusterFetcher) resolve(ctx context.Context, k routing.ExpertKey) (client.Ref, []routing.Replica, error) {
	want, ok := f.entry(k)
	if !ok {
		return client.Ref{}, nil, fmt.Errorf("worker: model %q has no expert %v", f.name, k)
	}
	e, reps := f.view.choose(ctx, func(s *routing.Snapshot) *routing.Entry { return s.Expert(k) }, f.seed)
	switch {
	case e == nil:
		return client.Ref{}, nil, fmt.Errorf("worker: expert %v of %q has no placement", k, f.name)
	case e.Digest != want.Digest || e.Size != want.Size:
		return client.Ref{}, nil, fmt.Errorf("worker: expert %v of %q is now blob %s (%d bytes), the loaded model has %s (%d bytes): re-imported? restart the worker",
			k, f.name, e.Digest, e.Size, want.Digest, want.Size)
	case len(reps) == 0:
		return client.Ref{}, nil, fmt.Errorf("%w: expert %v of %q has no ready replica", storepb.ErrNotFound, k, f.name)
	}
	return client.Ref{Digest: e.Digest, Size: e.Size}, reps, nil
}

// denseMarker names the file that records which dense blobs a local checkpoint was built from.
const denseMarker = "dense-digests.json"

// materializeDense writes the model's dense tensors (from its dense blobs), its tokenizer files and
// config.json as a local checkpoint in dir, which engine.Load and tokenizer.Load read. A checkpoint already built from the same
// blobs is reused.
func materializeDense(ctx context.Context, dir string, man placement.Manifest, view *clusterView, cl *client.Client, seed uint64) error {
	if len(man.Config) == 0 {
		return fmt.Errorf("worker: manifest of %q has no config (imported by an older pregate? import it again)", man.Name)
	}
	var digests []string
	for _, d := range man.Dense {
		digests = append(digests, d.Digest.String())
	}
	want, _ := json.Marshal(digests)
	if have, err := os.ReadFile(filepath.Join(dir, denseMarker)); err == nil && string(have) == string(want) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	weightMap := map[string]string{}
	for i, d := range man.Dense {
		_, reps := view.choose(ctx, func(s *routing.Snapshot) *routing.Entry { return s.Dense(d.Name) }, seed)
		buf := make([]byte, d.Size)
		if err := cl.Fetch(ctx, client.Ref{Digest: d.Digest, Size: d.Size}, reps, buf); err != nil {
			return fmt.Errorf("worker: dense blob %s: %w", d.Name, err)
		}
		h, data, err := blob.Parse(buf)
		if err != nil {
			return fmt.Errorf("worker: dense blob %s: %w", d.Name, err)
		}
		file := fmt.Sprintf("dense-%05d.safetensors", i)
		var infos []model.TensorInfo
		var bytes [][]byte
		for _, t := range h.Tensors {
			b, _, err := h.Tensor(data, t.Name)
			if err != nil {
				return err
			}
			if name, ok := strings.CutPrefix(t.Name, tokenizer.BlobPrefix); ok {
				// A tokenizer file (see internal/modelblobs): back to a file of the checkpoint.
				if !tokenizer.IsFileName(name) {
					return fmt.Errorf("worker: dense blob %s carries %q, not a tokenizer file", d.Name, name)
				}
				if err := atomicfile.WriteFile(filepath.Join(dir, name), b); err != nil {
					return err
				}
				continue
			}
			infos = append(infos, model.TensorInfo{Name: t.Name, DType: model.DType(t.DType), Shape: t.Shape})
			bytes = append(bytes, b)
			weightMap[t.Name] = file
		}
		if len(infos) == 0 {
			continue
		}
		if err := model.WriteSafetensors(filepath.Join(dir, file), infos, bytes, nil); err != nil {
			return err
		}
	}
	index, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	for _, f := range []struct {
		name string
		data []byte
	}{{"config.json", man.Config}, {"model.safetensors.index.json", index}, {denseMarker, want}} {
		if err := atomicfile.WriteFile(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

// waitManifest reads model's manifest, waiting (watching its key) until it is published.
// It returns the manifest's revision: placements are published with or before it.
func waitManifest(ctx context.Context, cli *clientv3.Client, ps *placement.Store, name string, giveUp time.Duration, log *slog.Logger) (placement.Manifest, int64, error) {
	logged := false
	var unreachable time.Time // since when etcd has not answered; zero while it does
	for {
		gctx, cancel := context.WithTimeout(ctx, min(5*time.Second, giveUp))
		m, rev, err := ps.Manifest(gctx, name)
		cancel()
		if err == nil {
			return m, rev, nil
		}
		if ctx.Err() != nil {
			return m, 0, ctx.Err()
		}
		if !errors.Is(err, placement.ErrNotFound) {
			// etcd does not answer: a worker cannot load without it (once loaded, it serves from
			// the placement it holds). Keep trying for giveUp, then fail, naming it.
			if unreachable.IsZero() {
				unreachable = time.Now()
				log.Warn("etcd does not answer; retrying", "endpoints", cli.Endpoints(), "for", giveUp, "err", err)
			}
			if time.Since(unreachable) >= giveUp {
				return m, 0, fmt.Errorf("etcd at %v unreachable for %v while loading: %w", cli.Endpoints(), giveUp, err)
			}
			sleep(ctx, time.Second)
			continue
		}
		unreachable = time.Time{}
		if !logged {
			log.Info("waiting for the model to be imported", "model", name)
			logged = true
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		for range cli.Watch(wctx, ps.ManifestKey(name)) {
			break
		}
		cancel()
		if ctx.Err() != nil {
			return m, 0, ctx.Err()
		}
	}
}
