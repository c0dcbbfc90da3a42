package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/pregate/pregate/routing"
)

// clusterView keeps what a worker needs of the cluster's state, fresh: the model's placements as an
// immutable routing.Snapshot (swapped atomically: fetches read it without locks) and the stores'
// addresses and health.
type clusterView struct {
	ps    *placement.Store
	model string
	log   *slog.Logger
	snap  atomic.Pointer[routing.Snapshot]
	// stores maps a store name to its address and whether it is alive.
	stores atomic.Pointer[map[string]storeAddr]
	synced atomic.Bool // a first full read of placements and stores is in
}

type storeAddr struct {
	replica client.Replica
	alive   bool
}

// run keeps the view fresh until ctx ends: list, then watch placements (re-listing after a watch
// breaks); store records are re-read every storeEvery.
func (v *clusterView) run(ctx context.Context, storeEvery time.Duration) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
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
	}()
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

func (v *clusterView) readStores(ctx context.Context) error {
	recs, err := v.ps.Stores(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]storeAddr, len(recs))
	for _, r := range recs {
		m[r.Name] = storeAddr{replica: client.Replica{Name: r.Name, GRPCAddr: r.GRPCAddr, DataAddr: r.DataAddr}, alive: r.State == placement.StoreAlive}
	}
	v.stores.Store(&m)
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
	cur := map[string][]routing.Replica{}
	for k, p := range exp {
		cur[v.ps.ExpertKey(v.model, k)] = replicasOf(p)
	}
	for n, p := range dense {
		cur[v.ps.DenseKey(v.model, n)] = replicasOf(p)
	}
	v.snap.Store(routing.NewSnapshot(rev, cur))
	if v.stores.Load() == nil {
		if err := v.readStores(ctx); err != nil {
			return err
		}
	}
	v.synced.Store(true)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := v.ps.WatchPlacements(wctx, v.model, rev+1)
	for ev := range events {
		// Apply every event already queued, then publish one snapshot.
		for {
			if ev.Placement == nil {
				delete(cur, ev.Key)
			} else {
				cur[ev.Key] = replicasOf(*ev.Placement)
			}
			rev = ev.Revision
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
		v.snap.Store(routing.NewSnapshot(rev, cur))
	}
	return errors.New("placement watch ended")
}

func replicasOf(p placement.Placement) []routing.Replica {
	out := make([]routing.Replica, len(p.Replicas))
	for i, r := range p.Replicas {
		out[i] = routing.Replica{Store: r.Store, Ready: r.State == placement.ReplicaReady}
	}
	return out
}

// holds reports whether the view's snapshot has a placement for every blob of man.
func (v *clusterView) holds(man placement.Manifest) bool {
	snap := v.snap.Load()
	for _, e := range man.Experts {
		if snap.Replicas(v.ps.ExpertKey(man.Name, e.Key())) == nil {
			return false
		}
	}
	for _, d := range man.Dense {
		if snap.Replicas(v.ps.DenseKey(man.Name, d.Name)) == nil {
			return false
		}
	}
	return true
}

// replicas returns the stores to fetch key from, in the order to try them. A store that placement
// names but the view has no address for yet (it joined since the last read of the store records)
// makes it read them now.
func (v *clusterView) replicas(ctx context.Context, key string, seed uint64) ([]client.Replica, error) {
	for attempt := 0; ; attempt++ {
		stores := v.stores.Load()
		if stores == nil {
			return nil, errors.New("worker: store addresses not known yet")
		}
		names := v.snap.Load().Choose(key, seed, func(s string) bool { return (*stores)[s].alive })
		out := make([]client.Replica, 0, len(names))
		unknown := false
		for _, n := range names {
			if a, ok := (*stores)[n]; ok {
				out = append(out, a.replica)
			} else {
				unknown = true
			}
		}
		if unknown && attempt == 0 {
			if err := v.readStores(ctx); err == nil {
				continue
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("worker: %s has no ready replica", strings.TrimPrefix(key, v.ps.Prefix()))
		}
		return out, nil
	}
}

// clusterFetcher fetches expert blobs from the stores placement names.
type clusterFetcher struct {
	view  *clusterView
	cl    *client.Client
	man   placement.Manifest
	seed  uint64
	index map[ExpertKey]placement.ExpertEntry
}

func newClusterFetcher(view *clusterView, cl *client.Client, man placement.Manifest, seed uint64) *clusterFetcher {
	f := &clusterFetcher{view: view, cl: cl, man: man, seed: seed, index: map[ExpertKey]placement.ExpertEntry{}}
	for _, e := range man.Experts {
		f.index[ExpertKey{e.Block, e.Expert}] = e
	}
	return f
}

// Size implements Fetcher.
func (f *clusterFetcher) Size(k ExpertKey) int64 { return f.index[k].Size }

// Fetch implements Fetcher.
func (f *clusterFetcher) Fetch(ctx context.Context, k ExpertKey, dst []byte) error {
	e, ok := f.index[k]
	if !ok {
		return fmt.Errorf("worker: model %q has no expert %v", f.man.Name, k)
	}
	d, err := blob.ParseDigest(e.Digest)
	if err != nil {
		return err
	}
	key := f.view.ps.ExpertKey(f.man.Name, placement.Key{Block: k.Block, Expert: k.Expert})
	snap := f.view.snap.Load()
	reps, err := f.view.replicas(ctx, key, f.seed)
	if err != nil {
		return err
	}
	err = f.cl.Fetch(ctx, client.Ref{Digest: d, Size: e.Size}, reps, dst)
	if err == nil || ctx.Err() != nil {
		return err
	}
	// Every replica failed. A rebalance may have moved the expert and deleted it where this fetch
	// looked: the coordinator deletes right after its Txn, and the watch event that tells this worker
	// can come a moment later. Wait (briefly) for a newer placement and try once more there.
	deadline := time.Now().Add(time.Second)
	for f.view.snap.Load() == snap && errors.Is(err, storepb.ErrNotFound) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
	if f.view.snap.Load() == snap {
		return err
	}
	if reps, rerr := f.view.replicas(ctx, key, f.seed); rerr == nil {
		return f.cl.Fetch(ctx, client.Ref{Digest: d, Size: e.Size}, reps, dst)
	}
	return err
}

// denseMarker names the file that records which dense blobs a local checkpoint was built from.
const denseMarker = "dense-digests.json"

// materializeDense writes the model's dense tensors (from its dense blobs) and config.json as a
// local checkpoint in dir, which engine.Load reads. A checkpoint already built from the same
// blobs is reused.
func materializeDense(ctx context.Context, dir string, man placement.Manifest, view *clusterView, cl *client.Client, seed uint64) error {
	if len(man.Config) == 0 {
		return fmt.Errorf("worker: manifest of %q has no config (imported by an older pregate? import it again)", man.Name)
	}
	var digests []string
	for _, d := range man.Dense {
		digests = append(digests, d.Digest)
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
		dig, err := blob.ParseDigest(d.Digest)
		if err != nil {
			return err
		}
		reps, err := view.replicas(ctx, view.ps.DenseKey(man.Name, d.Name), seed)
		if err != nil {
			return err
		}
		buf := make([]byte, d.Size)
		if err := cl.Fetch(ctx, client.Ref{Digest: dig, Size: d.Size}, reps, buf); err != nil {
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
			infos = append(infos, model.TensorInfo{Name: t.Name, DType: model.DType(t.DType), Shape: t.Shape})
			bytes = append(bytes, b)
			weightMap[t.Name] = file
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
func waitManifest(ctx context.Context, cli *clientv3.Client, ps *placement.Store, name string, log *slog.Logger) (placement.Manifest, int64, error) {
	logged := false
	for {
		m, rev, err := ps.Manifest(ctx, name)
		if err == nil {
			return m, rev, nil
		}
		if !errors.Is(err, placement.ErrNotFound) {
			return m, 0, err
		}
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
