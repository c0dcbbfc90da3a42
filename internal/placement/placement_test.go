package placement

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/routing"
)

func digest(i int) blob.Digest {
	var d blob.Digest
	binary.BigEndian.PutUint64(d[8:], uint64(int64(i)+1<<40))
	return d
}

func testPlacement(i int, stores ...string) *Placement {
	p := &Placement{Digest: digest(i), Size: int64(1000 + i), Epoch: 1}
	for _, s := range stores {
		p.Replicas = append(p.Replicas, routing.Replica{Store: s, State: routing.ReplicaReady})
	}
	return p
}

// testManifest returns a valid manifest of blocks × experts experts and two dense blobs.
func testManifest(name string, blocks, experts int) Manifest {
	m := Manifest{Name: name, Arch: "mixtral", DType: "BF16", Blocks: blocks, Replicas: 2,
		CreatedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	for b := range blocks {
		m.ExpertsPerBlock = append(m.ExpertsPerBlock, experts)
		for e := range experts {
			m.Experts = append(m.Experts, ExpertEntry{ExpertKey: routing.ExpertKey{Block: b, Expert: e}, Digest: digest(b*1000 + e), Size: 4096})
		}
	}
	m.Dense = []DenseEntry{{Name: "00000", Digest: digest(-1), Size: 1 << 20}, {Name: "00001", Digest: digest(-2), Size: 1 << 10}}
	return m
}

// publishChanges returns create-only changes for every blob of m.
func publishChanges(s *Store, m Manifest) []Change {
	var cs []Change
	for i, e := range m.Experts {
		cs = append(cs, Change{Key: s.ExpertKey(m.Name, e.ExpertKey), Placement: testPlacement(i, "s1", "s2")})
	}
	for i, d := range m.Dense {
		cs = append(cs, Change{Key: s.DenseKey(m.Name, d.Name), Placement: testPlacement(100000+i, "s1")})
	}
	return cs
}

func get(t *testing.T, ctx context.Context, key string) (string, int64) {
	t.Helper()
	resp, err := testClient.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
}

func TestManifestRoundTripAndModels(t *testing.T) {
	s, ctx := newStore(t)
	if _, _, err := s.Manifest(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Manifest of a missing model: %v, want ErrNotFound", err)
	}
	names := []string{"mistralai/Mixtral-8x7B", "a", "a-b", "a/b"}
	for i, name := range names {
		m := testManifest(name, 2+i, 3)
		if err := s.PutManifest(ctx, m); err != nil {
			t.Fatal(err)
		}
		got, rev, err := s.Manifest(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) || rev <= 0 {
			t.Fatalf("Manifest(%q) = %+v rev %d, want %+v", name, got, rev, m)
		}
		if e, ok := got.Expert(routing.ExpertKey{Block: 1, Expert: 2}); !ok || e.Digest != digest(1002) {
			t.Fatalf("Expert(1/2) = %+v, %v", e, ok)
		}
	}
	// A model with placements but no manifest is not published.
	if err := s.Apply(ctx, []Change{{Key: s.ExpertKey("unpublished", routing.ExpertKey{Block: 0, Expert: 0}), Placement: testPlacement(0, "s1")}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		t.Fatalf("Models() = %q, want %q", got, want)
	}
	if err := s.PutManifest(ctx, Manifest{Name: "bad", Blocks: 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutManifest(invalid) = %v, want ErrInvalid", err)
	}
}

func TestPlacementsRoundTripInKeyOrder(t *testing.T) {
	s, ctx := newStore(t)
	const model = "m"
	want := map[routing.ExpertKey]Placement{}
	var cs []Change
	for i, b := range []int{100, 2, 0, 10} {
		for j, e := range []int{9, 0, 10, 1} {
			k := routing.ExpertKey{Block: b, Expert: e}
			p := testPlacement(i*10+j, "s1", "s2")
			p.Replicas[1].State = routing.ReplicaCopying
			want[k] = *p
			cs = append(cs, Change{Key: s.ExpertKey(model, k), Placement: p})
		}
	}
	wantDense := map[string]Placement{"00000": *testPlacement(1, "s3"), "emb/lm_head": *testPlacement(2, "s1", "s3")}
	for name, p := range wantDense {
		cs = append(cs, Change{Key: s.DenseKey(model, name), Placement: &p})
	}
	if err := s.Apply(ctx, cs); err != nil {
		t.Fatal(err)
	}

	got, revs, rev, err := s.Placements(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Placements = %+v, want %+v", got, want)
	}
	// A raw range read returns the keys in numeric (block, expert) order, with the ModRevisions
	// Placements reported.
	resp, err := testClient.Get(ctx, s.modelPrefix(model)+"placement/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var order []routing.ExpertKey
	for _, kv := range resp.Kvs {
		pk, err := s.ParseKey(string(kv.Key))
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, pk.Expert)
		if revs[pk.Expert] != kv.ModRevision || kv.ModRevision > rev {
			t.Fatalf("%v: ModRevision %d, Placements said %d (read at %d)", pk.Expert, kv.ModRevision, revs[pk.Expert], rev)
		}
	}
	if len(order) != len(want) || !slices.IsSortedFunc(order, routing.ExpertKey.Compare) {
		t.Fatalf("range order %v is not (block, expert) order", order)
	}

	dense, drevs, _, err := s.DensePlacements(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(dense, wantDense) || len(drevs) != 2 || drevs["emb/lm_head"] == 0 {
		t.Fatalf("DensePlacements = %+v %v, want %+v", dense, drevs, wantDense)
	}
	if _, _, _, err := s.Placements(ctx, "none"); err != nil {
		t.Fatal(err)
	}
}

// A batch over one Txn's limit is split; a read over one page is paged at one revision.
func TestLargeBatchSplitsAndPages(t *testing.T) {
	s, ctx := newStore(t)
	const n = 2*pageSize + 17
	var cs []Change
	for i := range n {
		cs = append(cs, Change{Key: s.ExpertKey("big", routing.ExpertKey{Block: i / 256, Expert: i % 256}), Placement: testPlacement(i, "s1")})
	}
	if err := s.Apply(ctx, cs); err != nil {
		t.Fatal(err)
	}
	got, revs, _, err := s.Placements(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n || len(revs) != n || got[routing.ExpertKey{Block: (n - 1) / 256, Expert: (n - 1) % 256}].Digest != digest(n-1) {
		t.Fatalf("read back %d placements, want %d", len(got), n)
	}
	// Guarded batches need room for the guard and its re-check: still within etcd's limit.
	sess, err := concurrency.NewSession(testClient, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	e := s.Election(sess)
	if err := e.Campaign(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	for i := range cs {
		cs[i].ModRevision = revs[routing.ExpertKey{Block: i / 256, Expert: i % 256}]
		cs[i].Placement.Epoch = 2
	}
	if err := s.ApplyIf(ctx, LeaderGuard(e), cs[:3*DefaultMaxTxnOps]); err != nil {
		t.Fatal(err)
	}
}

func TestApplyConflictWritesNothing(t *testing.T) {
	s, ctx := newStore(t)
	ka, kb, kc := s.ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 0}), s.ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 1}), s.DenseKey("m", "d")
	if err := s.Apply(ctx, []Change{{Key: ka, Placement: testPlacement(0, "s1")}, {Key: kb, Placement: testPlacement(1, "s1")}}); err != nil {
		t.Fatal(err)
	}
	va, ra := get(t, ctx, ka)
	_, rb := get(t, ctx, kb)
	// Someone else changes kb after we read it.
	if err := s.Apply(ctx, []Change{{Key: kb, Placement: testPlacement(1, "s2"), ModRevision: rb}}); err != nil {
		t.Fatal(err)
	}
	vb2, rb2 := get(t, ctx, kb)

	tests := []struct {
		name    string
		changes []Change
		want    error
	}{
		{"stale revision", []Change{
			{Key: ka, Placement: testPlacement(0, "s9"), ModRevision: ra}, // fresh
			{Key: kc, Placement: testPlacement(2, "s9")},                  // create
			{Key: kb, Placement: testPlacement(1, "s9"), ModRevision: rb}, // stale
		}, ErrConflict},
		{"create-only on an existing key", []Change{
			{Key: kc, Placement: testPlacement(2, "s9")},
			{Key: ka, Placement: testPlacement(0, "s9")},
		}, ErrConflict},
		{"delete with a stale revision", []Change{{Key: kb, ModRevision: rb}}, ErrConflict},
		{"delete without a revision", []Change{{Key: kb}}, ErrInvalid},
		{"same key twice", []Change{{Key: kc, Placement: testPlacement(2, "s9")}, {Key: kc, Placement: testPlacement(2, "s8")}}, ErrInvalid},
		{"foreign key", []Change{{Key: "/elsewhere", Placement: testPlacement(2, "s9")}}, ErrInvalid},
		{"another cluster's key", []Change{{Key: New(testClient, "other").ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 0}), Placement: testPlacement(2, "s9")}}, ErrInvalid},
		{"block out of range", []Change{{Key: s.ExpertKey("m", routing.ExpertKey{Block: MaxIndex + 1, Expert: 0}), Placement: testPlacement(2, "s9")}}, ErrInvalid},
		{"invalid placement", []Change{{Key: kc, Placement: &Placement{Digest: digest(5), Replicas: []routing.Replica{{Store: "s1", State: "gone"}}}}}, ErrInvalid},
	}
	for _, tt := range tests {
		if err := s.Apply(ctx, tt.changes); !errors.Is(err, tt.want) {
			t.Errorf("%s: Apply = %v, want %v", tt.name, err, tt.want)
		}
		if v, r := get(t, ctx, ka); v != va || r != ra {
			t.Fatalf("%s: %s changed", tt.name, ka)
		}
		if v, r := get(t, ctx, kb); v != vb2 || r != rb2 {
			t.Fatalf("%s: %s changed", tt.name, kb)
		}
		if v, _ := get(t, ctx, kc); v != "" {
			t.Fatalf("%s: %s was created", tt.name, kc)
		}
	}

	// With the revisions read, the same batch goes through, deletes included.
	if err := s.Apply(ctx, []Change{{Key: ka, ModRevision: ra}, {Key: kb, Placement: testPlacement(1, "s3"), ModRevision: rb2}}); err != nil {
		t.Fatal(err)
	}
	if v, _ := get(t, ctx, ka); v != "" {
		t.Fatalf("%s not deleted", ka)
	}
}

func TestApplyIfDeposedLeaderWritesNothing(t *testing.T) {
	s, ctx := newStore(t)
	key := s.ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 0})
	s1, err := concurrency.NewSession(testClient, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := concurrency.NewSession(testClient, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()

	e1 := s.Election(s1)
	if err := e1.Campaign(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	guard1 := LeaderGuard(e1)
	if err := s.ApplyIf(ctx, guard1, []Change{{Key: key, Placement: testPlacement(0, "s1")}}); err != nil {
		t.Fatal(err)
	}
	v, rev := get(t, ctx, key)

	// c1's session expires (its lease is revoked); c2 wins.
	if _, err := testClient.Revoke(ctx, s1.Lease()); err != nil {
		t.Fatal(err)
	}
	e2 := s.Election(s2)
	if err := e2.Campaign(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	change := []Change{{Key: key, Placement: testPlacement(0, "s2"), ModRevision: rev}}
	if err := s.ApplyIf(ctx, guard1, change); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's ApplyIf = %v, want ErrNotLeader", err)
	}
	if v2, rev2 := get(t, ctx, key); v2 != v || rev2 != rev {
		t.Fatal("deposed leader wrote")
	}
	// The new leader's guard holds; a stale revision is still a conflict, not a leadership loss.
	stale := []Change{{Key: key, Placement: testPlacement(0, "s2"), ModRevision: rev - 1}}
	if err := s.ApplyIf(ctx, LeaderGuard(e2), stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("leader's stale ApplyIf = %v, want ErrConflict", err)
	}
	if err := s.ApplyIf(ctx, LeaderGuard(e2), change); err != nil {
		t.Fatal(err)
	}
	// A plain value compare works as a guard too.
	notThere := clientv3.Compare(clientv3.Value(s.Prefix()+"flag"), "=", "on")
	if err := s.ApplyIf(ctx, notThere, []Change{{Key: s.ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 1}), Placement: testPlacement(1, "s1")}}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("ApplyIf with a failing guard = %v, want ErrNotLeader", err)
	}
}

// Two writers doing read-modify-write on one key with retries both land every update.
func TestConcurrentReadModifyWrite(t *testing.T) {
	s, ctx := newStore(t)
	const writers, updates = 2, 20
	key := routing.ExpertKey{Block: 3, Expert: 7}
	if err := s.Apply(ctx, []Change{{Key: s.ExpertKey("m", key), Placement: &Placement{Digest: digest(0), Size: 1}}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conflicts := make([]int, writers)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range updates {
				for {
					ps, revs, _, err := s.Placements(ctx, "m")
					if err != nil {
						errs <- err
						return
					}
					p := ps[key]
					p.Epoch++
					p.Replicas = append(p.Replicas, routing.Replica{Store: fmt.Sprintf("w%d-%d", w, i), State: routing.ReplicaCopying})
					err = s.Apply(ctx, []Change{{Key: s.ExpertKey("m", key), Placement: &p, ModRevision: revs[key]}})
					if err == nil {
						break
					}
					if !errors.Is(err, ErrConflict) {
						errs <- err
						return
					}
					conflicts[w]++
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ps, _, _, err := s.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	p := ps[key]
	if p.Epoch != writers*updates || len(p.Replicas) != writers*updates {
		t.Fatalf("epoch %d, %d replicas; want %d of each", p.Epoch, len(p.Replicas), writers*updates)
	}
	for w := range writers {
		for i := range updates {
			if !slices.Contains(p.Replicas, routing.Replica{Store: fmt.Sprintf("w%d-%d", w, i), State: routing.ReplicaCopying}) {
				t.Fatalf("update w%d-%d lost", w, i)
			}
		}
	}
	t.Logf("conflicts retried: %v", conflicts)
}

func TestPublishModel(t *testing.T) {
	s, ctx := newStore(t)
	m := testManifest("m", 2, 4)
	cs := publishChanges(s, m)

	// Someone created one of the placements meanwhile: nothing is published.
	taken := s.ExpertKey("m", routing.ExpertKey{Block: 1, Expert: 3})
	if err := s.Apply(ctx, []Change{{Key: taken, Placement: testPlacement(99, "s9")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishModel(ctx, m, cs); !errors.Is(err, ErrConflict) {
		t.Fatalf("PublishModel = %v, want ErrConflict", err)
	}
	if _, _, err := s.Manifest(ctx, "m"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("manifest after a failed publish: %v", err)
	}
	if ps, _, _, _ := s.Placements(ctx, "m"); len(ps) != 1 {
		t.Fatalf("%d placements after a failed publish, want only the one there before", len(ps))
	}
	if names, _ := s.Models(ctx); len(names) != 0 {
		t.Fatalf("Models() = %q after a failed publish", names)
	}

	// Re-read, recompute, publish.
	_, revs, _, err := s.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	for i := range cs {
		if cs[i].Key == taken {
			cs[i].ModRevision = revs[routing.ExpertKey{Block: 1, Expert: 3}]
		}
	}
	if err := s.PublishModel(ctx, m, cs); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Manifest(ctx, "m"); err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("Manifest = %+v, %v", got, err)
	}
	ps, _, _, _ := s.Placements(ctx, "m")
	dense, _, _, _ := s.DensePlacements(ctx, "m")
	if len(ps) != 8 || len(dense) != 2 {
		t.Fatalf("%d expert and %d dense placements, want 8 and 2", len(ps), len(dense))
	}

	// Split over several Txns: a conflict in the last one still keeps the manifest out.
	small := s.WithMaxTxnOps(4)
	m2 := testManifest("m2", 3, 4)
	cs2 := publishChanges(small, m2)
	if err := small.Apply(ctx, []Change{{Key: cs2[len(cs2)-1].Key, Placement: testPlacement(0, "s9")}}); err != nil {
		t.Fatal(err)
	}
	if err := small.PublishModel(ctx, m2, cs2); !errors.Is(err, ErrConflict) {
		t.Fatalf("split PublishModel = %v, want ErrConflict", err)
	}
	if _, _, err := s.Manifest(ctx, "m2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("manifest after a failed split publish: %v", err)
	}
	// Keys of another model are refused.
	if err := s.PublishModel(ctx, m2, cs[:1]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PublishModel with another model's key = %v, want ErrInvalid", err)
	}
}

func TestWatchPlacements(t *testing.T) {
	s, ctx := newStore(t)
	_, _, rev, err := s.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := s.WatchPlacements(wctx, "m", rev+1)

	ek, dk := s.ExpertKey("m", routing.ExpertKey{Block: 1, Expert: 2}), s.DenseKey("m", "d0")
	if err := s.Apply(ctx, []Change{{Key: ek, Placement: testPlacement(1, "s1")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, testManifest("m", 1, 1)); err != nil { // not a placement: not reported
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, testManifest("m-other", 1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, []Change{{Key: s.ExpertKey("m-other", routing.ExpertKey{Block: 1, Expert: 2}), Placement: testPlacement(1, "s1")}}); err != nil {
		t.Fatal(err)
	}
	_, er := get(t, ctx, ek)
	if err := s.Apply(ctx, []Change{{Key: dk, Placement: testPlacement(2, "s2")}, {Key: ek, ModRevision: er}}); err != nil {
		t.Fatal(err)
	}

	next := func() Event {
		t.Helper()
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("watch closed early")
			}
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
		return Event{}
	}
	e1, e2, e3 := next(), next(), next()
	if e1.Key != ek || e1.Expert != (routing.ExpertKey{Block: 1, Expert: 2}) || e1.Placement == nil || e1.Placement.Digest != digest(1) || e1.Revision != er {
		t.Fatalf("first event %+v, want the put of %s at %d", e1, ek, er)
	}
	// One Txn: both at one revision, in the Txn's order.
	if e2.Key != dk || e2.Dense != "d0" || e2.Placement == nil || e3.Key != ek || e3.Placement != nil || e2.Revision != e3.Revision || e3.Revision <= er {
		t.Fatalf("then %+v and %+v, want the put of %s and the delete of %s", e2, e3, dk, ek)
	}
	cancel()
	for range events { // closes once ctx ends
	}

	// A revision compacted away closes the channel: the caller re-lists.
	_, _, now, err := s.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testClient.Compact(ctx, now); err != nil {
		t.Fatal(err)
	}
	closed := s.WatchPlacements(ctx, "m", rev+1)
	select {
	case e, ok := <-closed:
		if ok {
			t.Fatalf("event %+v from a compacted revision", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch from a compacted revision did not close")
	}
}

func TestRecordsAndLeases(t *testing.T) {
	s, ctx := newStore(t)
	lease, err := testClient.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	stores := []StoreRecord{
		{Name: "store-a", GRPCAddr: "10.0.0.1:7000", DataAddr: "10.0.0.1:7001", Capacity: 1 << 30, Used: 1 << 20, Blobs: 12, Epoch: 3, Updated: at},
		{Name: "store-b", GRPCAddr: "10.0.0.2:7000", DataAddr: "10.0.0.2:7001", Capacity: 2 << 30, Epoch: 1, Updated: at},
	}
	for _, r := range stores {
		if err := s.PutStore(ctx, r, lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	workers := []WorkerRecord{{Name: "w0", HTTPAddr: "10.0.0.9:8080", Model: "mistralai/Mixtral-8x7B", Mode: "pregated", Updated: at}}
	if err := s.PutWorker(ctx, workers[0], lease.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStore(ctx, StoreRecord{}, lease.ID); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutStore without a name = %v", err)
	}
	gotS, err := s.Stores(ctx)
	if err != nil || !reflect.DeepEqual(gotS, stores) {
		t.Fatalf("Stores() = %+v, %v; want %+v", gotS, err, stores)
	}
	gotW, err := s.Workers(ctx)
	if err != nil || !reflect.DeepEqual(gotW, workers) {
		t.Fatalf("Workers() = %+v, %v; want %+v", gotW, err, workers)
	}

	if _, err := testClient.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if gotS, err := s.Stores(ctx); err != nil || len(gotS) != 0 {
		t.Fatalf("Stores() after the lease was revoked = %+v, %v", gotS, err)
	}
	if gotW, err := s.Workers(ctx); err != nil || len(gotW) != 0 {
		t.Fatalf("Workers() after the lease was revoked = %+v, %v", gotW, err)
	}
}

func TestSetDrainMarksStoresTogether(t *testing.T) {
	s := New(testClient, t.Name())
	ctx := context.Background()
	if err := s.SetDrain(ctx, true, "a", "b/c"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Drains(ctx)
	if err != nil || !reflect.DeepEqual(got, map[string]bool{"a": true, "b/c": true}) {
		t.Fatalf("Drains = %v, %v; want a and b/c", got, err)
	}
	// Both marks were written by one Txn: they share a ModRevision.
	ra, _ := testClient.Get(ctx, s.DrainKey("a"))
	rb, _ := testClient.Get(ctx, s.DrainKey("b/c"))
	if ra.Kvs[0].ModRevision != rb.Kvs[0].ModRevision {
		t.Fatalf("marks written at revisions %d and %d, want one Txn", ra.Kvs[0].ModRevision, rb.Kvs[0].ModRevision)
	}
	if err := s.SetDrain(ctx, false, "a"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Drains(ctx); !reflect.DeepEqual(got, map[string]bool{"b/c": true}) {
		t.Fatalf("after undoing a: %v", got)
	}
	for _, names := range [][]string{nil, {"x", ""}} {
		if err := s.SetDrain(ctx, true, names...); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetDrain(%q) = %v, want ErrInvalid", names, err)
		}
	}
}
