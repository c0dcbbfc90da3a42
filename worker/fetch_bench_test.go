package worker

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/modelblobs"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// memTransport serves blobs from memory: a fetch through it costs everything on the worker's side of
// the fetch path (lookup, replica choice, the client's bookkeeping) except the wire.
type memTransport struct{ blobs map[blob.Digest][]byte }

func (m memTransport) Fetch(_ context.Context, _ routing.Replica, d blob.Digest, off int64, dst []byte, _ bool) error {
	copy(dst, m.blobs[d][off:])
	return nil
}

func (memTransport) Close() error { return nil }

// BenchmarkClusterFetch measures one expert fetch through the worker's fetch path (the placement
// snapshot's lookup and replica choice, then client.Fetch) of switch-tiny's experts, round robin:
// "resolve" is the lookup alone (the blob and the replicas to try), "memory" a whole fetch with a
// transport that copies from RAM (the path's own cost), "loopback" over a store's data plane on
// 127.0.0.1.
func BenchmarkClusterFetch(b *testing.B) {
	lc, err := cluster.Start(cluster.Config{Dir: b.TempDir(), Stores: 2, Replicas: 2, StoreCapacity: 64 << 20, Fast: true})
	if err != nil {
		b.Fatal(err)
	}
	defer lc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := lc.WaitStores(ctx, 2); err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join("..", "testdata", "switch-tiny")
	if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: "m"}); err != nil {
		b.Fatal(err)
	}
	view := newClusterView(lc.Placement(), "m", slog.New(slog.DiscardHandler))
	vctx, vcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); view.run(vctx, time.Second) }()
	defer func() { vcancel(); <-done }()
	man, _, err := lc.Placement().Manifest(ctx, "m")
	if err != nil {
		b.Fatal(err)
	}
	for !view.synced.Load() || !view.holds(man) {
		time.Sleep(10 * time.Millisecond)
	}
	mem := memTransport{blobs: map[blob.Digest][]byte{}}
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer ckpt.Close()
	if err := modelblobs.Split(ckpt, "m", 0, func(bl modelblobs.Blob) error {
		mem.blobs[bl.Digest] = slices.Clone(bl.Data)
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	var largest int64
	for _, e := range man.Experts {
		largest = max(largest, e.Size)
	}
	b.Run("resolve", func(b *testing.B) {
		f := newClusterFetcher(view, nil, man, 1)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			e := man.Experts[i%len(man.Experts)]
			if _, reps, err := f.resolve(ctx, e.ExpertKey); err != nil || len(reps) != 2 {
				b.Fatal(reps, err)
			}
		}
	})
	for _, transport := range []string{"memory", "loopback"} {
		b.Run(transport, func(b *testing.B) {
			cfg := client.DefaultConfig()
			if transport == "memory" {
				cfg.Transport = mem
			}
			cl := client.New(cfg)
			defer cl.Close()
			f := newClusterFetcher(view, cl, man, 1)
			keys := make([]routing.ExpertKey, len(man.Experts))
			for i, e := range man.Experts {
				keys[i] = routing.ExpertKey{Block: e.Block, Expert: e.Expert}
			}
			dst := make([]byte, largest)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				k := keys[i%len(keys)]
				if err := f.Fetch(ctx, k, dst[:f.Size(k)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
