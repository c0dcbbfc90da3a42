package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/routing"
)

// Anti-entropy timers of these tests: an inventory every second, unreferenced blobs kept 3 s.
const (
	aePeriod = time.Second
	aeGrace  = 3 * time.Second
	// aeSlack covers the reconcile pass that notices (passes run every 100 ms, and take some).
	aeSlack = 700 * time.Millisecond
)

// startPersistentCluster starts stores that keep their blobs on disk and a coordinator whose dead
// grace (30 s) outlasts a store's restart, so that a store that comes back keeps its placements.
func startPersistentCluster(t *testing.T, stores int) *cluster.Local {
	t.Helper()
	return startClusterWith(t, cluster.Config{Stores: stores, Replicas: 2, StoreCapacity: 64 << 20, Persist: true,
		Coordinator: func(c *coordinator.Config) {
			c.AntiEntropyInterval, c.OrphanGrace, c.DeadGrace = aePeriod, aeGrace, 30*time.Second
		}})
}

func replicaOn(lc *cluster.Local, store string) routing.Replica {
	s := lc.Store(store)
	return routing.Replica{Store: store, GRPCAddr: s.Addr(), DataAddr: s.DataAddr()}
}

// watchRemovals reports, for each (store, digest) it is given, when a placement write first named
// the blob without a ready replica on that store.
type removalWatch struct {
	cancel context.CancelFunc
	seen   chan struct {
		k  [2]string
		at time.Time
	}
}

func watchRemovals(t *testing.T, lc *cluster.Local) *removalWatch {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &removalWatch{cancel: cancel, seen: make(chan struct {
		k  [2]string
		at time.Time
	}, 4096)}
	ps := lc.Placement()
	wch := lc.Etcd().Watch(ctx, ps.Prefix()+"models/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if _, err := ps.ParseKey(string(ev.Kv.Key)); err != nil || ev.PrevKv == nil || ev.Type != clientv3.EventTypePut {
					continue
				}
				var prev, cur placement.Placement
				if json.Unmarshal(ev.PrevKv.Value, &prev) != nil || json.Unmarshal(ev.Kv.Value, &cur) != nil {
					continue
				}
				for _, s := range prev.Ready() {
					if !slices.Contains(cur.Ready(), s) {
						select {
						case w.seen <- struct {
							k  [2]string
							at time.Time
						}{[2]string{s, cur.Digest.String()}, time.Now()}:
						case <-ctx.Done():
							return
						}
					}
				}
			}
		}
	}()
	return w
}

// waitRemoved waits until placement has stopped naming every one of want (store, digest) as ready
// and returns the longest time that took from since.
func (w *removalWatch) waitRemoved(t *testing.T, want map[[2]string]bool, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	left := maps.Clone(want)
	var longest time.Duration
	timeout := time.After(within)
	for len(left) > 0 {
		select {
		case ev := <-w.seen:
			if left[ev.k] {
				delete(left, ev.k)
				longest = max(longest, ev.at.Sub(since))
			}
		case <-timeout:
			first := slices.SortedFunc(maps.Keys(left), func(a, b [2]string) int { return strings.Compare(a[1], b[1]) })
			t.Fatalf("after %v placement still names %d lost replicas as ready, e.g. %v", within, len(left), first[:min(3, len(first))])
		}
	}
	return longest
}

// TestAntiEntropy deletes blobs behind the coordinator's back — from one replica's store (RAM and
// disk), from every replica's, and by restarting a store with an empty data dir — and checks that
// placement (and so status) tells the truth within one anti-entropy period, that R is restored from
// the replicas left, and that blobs no placement names disappear after the grace, except those of
// an import in progress.
func TestAntiEntropy(t *testing.T) {
	lc := startPersistentCluster(t, 3)
	importModel(t, lc, synthModel(t), "moe")
	waitConverged(t, lc, 3)
	cl := client.New(client.DefaultConfig())
	defer cl.Close()
	ctx := ctxFor(t, 2*time.Minute)
	exp, _, _, err := lc.Placement().Placements(ctx, "moe")
	if err != nil {
		t.Fatal(err)
	}
	keys := slices.SortedFunc(maps.Keys(exp), routing.ExpertKey.Compare)
	removals := watchRemovals(t, lc)

	t.Run("deleted on one replica", func(t *testing.T) {
		lost := map[[2]string]bool{}
		for _, k := range keys[:8] {
			p := exp[k]
			s := p.Ready()[0]
			if ok, err := cl.Delete(ctx, replicaOn(lc, s), p.Digest); err != nil || !ok {
				t.Fatalf("delete %v on %s: %v, %v", k, s, ok, err)
			}
			lost[[2]string{s, p.Digest.String()}] = true
		}
		took := removals.waitRemoved(t, lost, time.Now(), aePeriod+aeSlack)
		t.Logf("placement dropped the %d lost replicas within %v (period %v)", len(lost), took.Round(time.Millisecond), aePeriod)
		waitConverged(t, lc, 3)
		verifyStoresHoldPlacement(t, lc, "moe")
		if n := lc.Coordinator().Counters().MissingReplicas; n < int64(len(lost)) {
			t.Errorf("coordinator counted %d missing replicas, want ≥ %d", n, len(lost))
		}
		resp, err := http.Get("http://" + lc.Coordinator().HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("pregate_coordinator_missing_replicas_total %d", lc.Coordinator().Counters().MissingReplicas)
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	})

	t.Run("deleted on every replica", func(t *testing.T) {
		p := exp[keys[len(keys)-1]]
		start := time.Now()
		for _, s := range p.Ready() {
			if _, err := cl.Delete(ctx, replicaOn(lc, s), p.Digest); err != nil {
				t.Fatal(err)
			}
		}
		st := waitStatus(t, lc, aePeriod+aeSlack, "status unhealthy", func(st *coordinator.Status) bool {
			return !st.Summary.Healthy && st.Summary.State == coordinator.StateUnavailable && st.Summary.ExpertsUnavailable == 1
		})
		t.Logf("status said %s (%d expert unavailable) %v after the deletions", st.Summary.State, st.Summary.ExpertsUnavailable, time.Since(start).Round(time.Millisecond))
		// Nobody can copy it back; status keeps saying so until the checkpoint is imported again.
		time.Sleep(2 * aePeriod)
		if st := readStatus(t, lc); st.Summary.Healthy || st.Summary.ExpertsUnavailable != 1 {
			t.Fatalf("status %s with %d unavailable, want the lost expert still unavailable", st.Summary.State, st.Summary.ExpertsUnavailable)
		}
		rep := importModel(t, lc, synthModel(t), "moe")
		if rep.Uploaded != 2 {
			t.Errorf("re-import uploaded %d blobs, want the lost one twice", rep.Uploaded)
		}
		waitConverged(t, lc, 3)
		verifyStoresHoldPlacement(t, lc, "moe")
	})

	t.Run("restarted with an empty data dir", func(t *testing.T) {
		const victim = "store-1"
		cur, _, _, err := lc.Placement().Placements(ctx, "moe")
		if err != nil {
			t.Fatal(err)
		}
		lost := map[[2]string]bool{}
		for _, p := range cur {
			if slices.Contains(p.Ready(), victim) {
				lost[[2]string{victim, p.Digest.String()}] = true
			}
		}
		if err := lc.KillStore(victim); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(lc.StoreDir(victim), "blobs")); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		if _, err := lc.StartStore(victim); err != nil {
			t.Fatal(err)
		}
		// The coordinator hears of the new incarnation at its next probe (gossip may take longer to
		// settle: the old incarnation was being declared dead); from then on, one period at most.
		took := removals.waitRemoved(t, lost, restarted, aePeriod+aeSlack)
		t.Logf("placement dropped the %d replicas the restarted store lost %v after its restart", len(lost), took.Round(time.Millisecond))
		waitConverged(t, lc, 3)
		verifyStoresHoldPlacement(t, lc, "moe")
		if n := lc.Store(victim).Stats().Blobs; n == 0 {
			t.Error("the restarted store was given nothing back")
		}
	})

	t.Run("orphans", func(t *testing.T) {
		stray := []byte("a blob no placement names")
		imported := []byte("a blob an import in progress names")
		r := replicaOn(lc, "store-0")
		for _, b := range [][]byte{stray, imported} {
			if _, _, err := cl.Put(ctx, r, b); err != nil {
				t.Fatal(err)
			}
		}
		m := placement.Manifest{Name: "importing", Blocks: 1, ExpertsPerBlock: []int{1},
			Experts: []placement.ExpertEntry{{Digest: blob.Sum(imported), Size: int64(len(imported))}}}
		end, err := lc.Placement().BeginImport(ctx, m, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		has := func(b []byte) bool {
			got, err := cl.Has(ctx, r, blob.Sum(b))
			if err != nil {
				t.Fatal(err)
			}
			return got[0]
		}
		time.Sleep(aeGrace / 2)
		if !has(stray) || !has(imported) {
			t.Fatalf("a blob was deleted before the grace: stray %v, imported %v", has(stray), has(imported))
		}
		deadline := time.Now().Add(aeGrace + aePeriod + aeSlack)
		for has(stray) {
			if time.Now().After(deadline) {
				t.Fatalf("the unreferenced blob outlived the grace (%v) by more than a period", aeGrace)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !has(imported) {
			t.Fatal("the blob of the import in progress was deleted")
		}
		end()
		// The grace starts when an inventory first finds the blob unnamed (within a period of the
		// import's end) and the blob goes at the first inventory after the grace: two periods.
		deadline = time.Now().Add(aeGrace + 2*aePeriod + aeSlack)
		for has(imported) {
			if time.Now().After(deadline) {
				t.Fatalf("the ended import's blob outlived the grace (%v) by more than two periods", aeGrace)
			}
			time.Sleep(50 * time.Millisecond)
		}
		verifyStoresHoldPlacement(t, lc, "moe")
		if n := lc.Coordinator().Counters().OrphansDeleted; n < 2 {
			t.Errorf("coordinator counted %d deleted orphans, want ≥ 2", n)
		}
	})
}

// TestCopyRetriesBackOff fills a store with blobs no placement names, so that copies to it fail
// (it is full) until the orphans are collected: the failing copies are retried with backoff, not at
// every pass, and succeed once the space is back.
func TestCopyRetriesBackOff(t *testing.T) {
	lc := startClusterWith(t, cluster.Config{Stores: 3, Replicas: 2, StoreCapacity: 16 << 20,
		Coordinator: func(c *coordinator.Config) {
			c.AntiEntropyInterval, c.OrphanGrace = 500*time.Millisecond, 6*time.Second
		}})
	importModel(t, lc, synthModel(t), "moe")
	waitConverged(t, lc, 3)
	// Fill store-2 to the brim with unreferenced blobs, then lose store-0: the blobs it held must
	// get a second replica on store-2, which has no room for the next 6 s.
	cl := client.New(client.DefaultConfig())
	defer cl.Close()
	ctx := ctxFor(t, time.Minute)
	r := replicaOn(lc, "store-2")
	for i := 0; ; i++ {
		b := make([]byte, 64<<10)
		b[0], b[1] = byte(i), byte(i>>8)
		if _, _, err := cl.Put(ctx, r, b); err != nil {
			break // full
		}
	}
	// The blobs that need a copy to store-2 once store-0 is gone.
	exp, _, _, err := lc.Placement().Placements(ctx, "moe")
	if err != nil {
		t.Fatal(err)
	}
	need := 0
	for _, p := range exp {
		if slices.Contains(p.Ready(), "store-0") && !slices.Contains(p.Ready(), "store-2") {
			need++
		}
	}
	before := lc.Coordinator().Counters().CopyErrors
	start := time.Now()
	if err := lc.KillStore("store-0"); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 2)
	took := time.Since(start)
	failures := lc.Coordinator().Counters().CopyErrors - before
	t.Logf("R restored %v after the loss, with %d failed copies of the %d experts that needed one", took.Round(time.Millisecond), failures, need)
	if failures == 0 {
		t.Fatal("no copy failed: the store was not full, the test proved nothing")
	}
	// Retrying every 200 ms (as before the backoff) for the 6.5 s until the orphans go would fail
	// ~30 times per blob; backing off from 0.5 s, doubling with ±50% jitter, at most 5 or 6.
	if perBlob := float64(failures) / float64(need); perBlob > 6 {
		t.Errorf("%.1f failed copies per blob in %v: retries do not back off", perBlob, took)
	}
	verifyStoresHoldPlacement(t, lc, "moe")
}
