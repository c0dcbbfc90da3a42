package coordinator_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/routing"
)

// leaderAt returns the name of the coordinator that led at revision rev.
func leaderAt(ctx context.Context, lc *cluster.Local, rev int64) (string, error) {
	resp, err := lc.Etcd().Get(ctx, lc.Placement().LeaderPrefix()+"/", append(clientv3.WithFirstCreate(), clientv3.WithRev(rev))...)
	if err != nil || len(resp.Kvs) == 0 {
		return "", err
	}
	var li coordinator.LeaderInfo
	err = json.Unmarshal(resp.Kvs[0].Value, &li)
	return li.Name, err
}

// writerAudit checks every placement write against the election: each one a coordinator made must
// have been made while it was the leader at that write's revision.
type writerAudit struct {
	mu      sync.Mutex
	writes  map[string]int
	wrong   []string
	cancel  context.CancelFunc
	done    chan struct{}
	checked atomic.Int64
}

func auditWriters(lc *cluster.Local) *writerAudit {
	a := &writerAudit{writes: map[string]int{}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	ps := lc.Placement()
	wch := lc.Etcd().Watch(ctx, ps.Prefix()+"models/", clientv3.WithPrefix())
	go func() {
		defer close(a.done)
		for wr := range wch {
			for _, ev := range wr.Events {
				if _, err := ps.ParseKey(string(ev.Kv.Key)); err != nil || ev.Type != clientv3.EventTypePut {
					continue
				}
				var p placement.Placement
				if json.Unmarshal(ev.Kv.Value, &p) != nil || p.Writer == coordinator.ImportWriter {
					continue
				}
				leader, err := leaderAt(ctx, lc, ev.Kv.ModRevision)
				if err != nil {
					continue // cancelled at the end
				}
				a.mu.Lock()
				a.writes[p.Writer]++
				if leader != p.Writer {
					a.wrong = append(a.wrong, string(ev.Kv.Key)+" written by "+p.Writer+" while "+leader+" led")
				}
				a.mu.Unlock()
				a.checked.Add(1)
			}
		}
	}()
	return a
}

func (a *writerAudit) stop(t *testing.T) map[string]int {
	t.Helper()
	a.cancel()
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.wrong) > 0 {
		t.Errorf("%d placement writes by a coordinator that was not the leader; first: %s", len(a.wrong), a.wrong[0])
	}
	t.Logf("placement writes per coordinator: %v", a.writes)
	return a.writes
}

func TestTwoCoordinatorsOneWriter(t *testing.T) {
	lc := startCluster(t, 3, 2, 256<<20)
	first := lc.Coordinator()
	second, err := lc.StartCoordinator()
	if err != nil {
		t.Fatal(err)
	}
	importModel(t, lc, "../testdata/mixtral-tiny", "m")
	waitConverged(t, lc, 3)
	if !first.IsLeader() || second.IsLeader() || second.Passes() != 0 {
		t.Fatalf("leaders: first %v, second %v (second ran %d passes)", first.IsLeader(), second.IsLeader(), second.Passes())
	}
	audit := auditWriters(lc)

	// The leader loses its etcd session while its process lives on (a partition, a long GC pause):
	// its lease is revoked under it, as its expiry would. The other must take over, and the old one
	// must not write once it is not the leader.
	ctx := ctxFor(t, 10*time.Second)
	resp, err := lc.Etcd().Get(ctx, lc.Placement().LeaderPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("leader key: %v", err)
	}
	// Start moves first, so that the old leader is mid-pass when deposed.
	if _, err := lc.AddStore(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if _, err := lc.Etcd().Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !second.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("the second coordinator never took over")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := lc.AddStore(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 5)
	writes := audit.stop(t)
	if writes["coord-1"] == 0 {
		t.Errorf("the new leader wrote nothing: %v", writes)
	}
	// The old leader learns of its lost session at its next keepalive (a third of the TTL).
	for deadline := time.Now().Add(5 * time.Second); first.IsLeader(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deposed coordinator still thinks it leads")
		}
	}
	verifyStoresHoldPlacement(t, lc, "m")
}

func TestCoordinatorRestartResumes(t *testing.T) {
	lc := startCluster(t, 3, 2, 256<<20)
	importModel(t, lc, "../testdata/mixtral-tiny", "m")
	waitConverged(t, lc, 3)
	ctx := ctxFor(t, 20*time.Second)
	ps := lc.Placement()
	_, manRev, err := ps.Manifest(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}

	// The coordinator dies after marking a copy it never made; a store joins while none runs.
	lc.StopCoordinator(lc.Coordinator())
	exp, revs, _, err := ps.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	k := routing.ExpertKey{Block: 1, Expert: 3}
	p := exp[k]
	var spare string
	for _, s := range lc.StoreNames() {
		if !slices.Contains(p.Ready(), s) {
			spare = s
		}
	}
	p.Replicas = append(p.Replicas, routing.Replica{Store: spare, State: routing.ReplicaCopying})
	if err := ps.Apply(ctx, []placement.Change{{Key: ps.ExpertKey("m", k), Placement: &p, ModRevision: revs[k]}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.AddStore(); err != nil {
		t.Fatal(err)
	}
	if st := readStatus(t, lc); st.Summary.CopiesInFlight != 1 || st.Summary.Leader != "" {
		t.Fatalf("with no coordinator: %d copies in flight, leader %q", st.Summary.CopiesInFlight, st.Summary.Leader)
	}

	co, err := lc.StartCoordinator()
	if err != nil {
		t.Fatal(err)
	}
	st := waitConverged(t, lc, 4)
	if co.BytesCopied() == 0 {
		t.Error("the restarted coordinator moved nothing onto the new store")
	}
	exp, _, _, err = ps.Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range exp[k].Replicas {
		if !r.Ready() {
			t.Errorf("the stale copy was left: %+v", exp[k])
		}
	}
	if _, rev, err := ps.Manifest(ctx, "m"); err != nil || rev != manRev {
		t.Errorf("the manifest was rewritten (revision %d → %d, %v)", manRev, rev, err)
	}
	if st.Summary.Leader != "coord-1" {
		t.Errorf("leader %q, want coord-1", st.Summary.Leader)
	}
	verifyStoresHoldPlacement(t, lc, "m")
}

// TestRestartWithAStoreDownMovesNothing: a coordinator that starts while a store is down (a
// cluster coming back, a store rebooting) keeps that store's replicas for the dead grace: placement
// is computed over the same stores as before, so no blob is copied or dropped.
func TestRestartWithAStoreDownMovesNothing(t *testing.T) {
	lc := startCluster(t, 3, 2, 256<<20)
	importModel(t, lc, "../testdata/mixtral-tiny", "m")
	waitConverged(t, lc, 3)
	ctx := ctxFor(t, 20*time.Second)
	before, _, _, err := lc.Placement().Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	lc.StopCoordinator(lc.Coordinator())
	if err := lc.KillStore("store-2"); err != nil {
		t.Fatal(err)
	}
	// Let the surviving stores' gossip declare it dead, so the new coordinator never sees it alive.
	time.Sleep(2 * time.Second)
	co, err := lc.StartCoordinatorWith(func(c *coordinator.Config) { c.DeadGrace = time.Minute })
	if err != nil {
		t.Fatal(err)
	}
	for start := co.Passes(); co.Passes() < start+5; time.Sleep(20 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatal("the new coordinator ran no passes")
		}
	}
	after, _, _, err := lc.Placement().Placements(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	for k, p := range before {
		if !slices.Equal(p.Ready(), after[k].Ready()) {
			t.Errorf("expert %v moved while store-2 was within its grace: %v → %v", k, p.Ready(), after[k].Ready())
		}
	}
	if co.BytesCopied() != 0 {
		t.Errorf("%d bytes copied during the grace", co.BytesCopied())
	}
	if st := readStatus(t, lc); st.Summary.StoresDead+st.Summary.StoresSuspect != 1 || st.Summary.ExpertsUnavailable != 0 || st.Summary.ExpertsUnderReplicated == 0 {
		t.Errorf("status during the grace: %+v", st.Summary)
	}
}
