package routing

import (
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pregate/pregate/expertstore/blob"
)

// reps builds replicas: "a" is ready, "b-" is copying.
func reps(names ...string) []Replica {
	out := make([]Replica, len(names))
	for i, n := range names {
		out[i] = Replica{Store: n, State: ReplicaReady}
		if n[len(n)-1] == '-' {
			out[i] = Replica{Store: n[:len(n)-1], State: ReplicaCopying}
		}
	}
	return out
}

// storesOf gives every named store an address; down ones are unhealthy.
func storesOf(names []string, down ...string) map[string]StoreAddr {
	m := map[string]StoreAddr{}
	for _, n := range names {
		m[n] = StoreAddr{GRPCAddr: n + ":7070", DataAddr: n + ":7071", Healthy: !slices.Contains(down, n)}
	}
	return m
}

func names(rs []Replica) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Store)
	}
	return out
}

func TestSnapshotChoose(t *testing.T) {
	k := ExpertKey{Block: 1, Expert: 2}
	p := Placements{Experts: map[ExpertKey]Entry{k: {Digest: blob.Sum([]byte("x")), Size: 9, Replicas: reps("a", "b-", "c", "d")}}}
	all := []string{"a", "b", "c", "d"}
	tests := []struct {
		name   string
		stores map[string]StoreAddr
		// wantHealthy then wantUnhealthy, each a rotation of its placement order.
		wantHealthy, wantUnhealthy []string
		unresolved                 bool
	}{
		{name: "all healthy", stores: storesOf(all), wantHealthy: []string{"a", "c", "d"}},
		{name: "one down", stores: storesOf(all, "c"), wantHealthy: []string{"a", "d"}, wantUnhealthy: []string{"c"}},
		{name: "unready never", stores: storesOf(all, "a", "d"), wantHealthy: []string{"c"}, wantUnhealthy: []string{"a", "d"}},
		{name: "all down", stores: storesOf(all, "a", "c", "d"), wantUnhealthy: []string{"a", "c", "d"}},
		{name: "unknown store", stores: storesOf([]string{"a", "b", "d"}), wantHealthy: []string{"a", "d"}, unresolved: true},
		{name: "unknown unready store", stores: storesOf([]string{"a", "c", "d"}), wantHealthy: []string{"a", "c", "d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSnapshot(7, p, tt.stores)
			e := s.Expert(k)
			if e == nil || e.Size != 9 || e.Digest != blob.Sum([]byte("x")) || e.Unresolved() != tt.unresolved {
				t.Fatalf("entry %+v, want size 9, the digest, unresolved %v", e, tt.unresolved)
			}
			for seed := range uint64(8) {
				got := e.Choose(seed)
				nh := len(tt.wantHealthy)
				if len(got) != nh+len(tt.wantUnhealthy) {
					t.Fatalf("seed %d: %v, want %v then %v", seed, names(got), tt.wantHealthy, tt.wantUnhealthy)
				}
				if !isRotation(names(got[:nh]), tt.wantHealthy) || !isRotation(names(got[nh:]), tt.wantUnhealthy) {
					t.Fatalf("seed %d: %v, want a rotation of %v then of %v", seed, names(got), tt.wantHealthy, tt.wantUnhealthy)
				}
				for _, r := range got {
					if r.GRPCAddr != r.Store+":7070" || r.DataAddr != r.Store+":7071" || !r.Ready() {
						t.Fatalf("replica %+v: want its store's addresses, ready", r)
					}
				}
			}
		})
	}
	s := NewSnapshot(7, p, storesOf(all))
	if s.Epoch() != 7 || s.Len() != 1 || s.Expert(ExpertKey{1, 3}) != nil || s.Expert(ExpertKey{0, 2}) != nil || s.Expert(ExpertKey{-1, 0}) != nil {
		t.Fatalf("epoch %d len %d, or an unknown key found", s.Epoch(), s.Len())
	}
	if got := s.Expert(k).Replicas; !reflect.DeepEqual(names(got), all) || got[1].Ready() {
		t.Fatalf("Replicas = %+v, want all four in placement order", got)
	}
	none := NewSnapshot(1, Placements{Experts: map[ExpertKey]Entry{k: {Replicas: reps("a-")}}}, storesOf(all))
	if got := none.Expert(k).Choose(0); got != nil {
		t.Fatalf("no ready replica: Choose = %v, want nil", got)
	}
}

// isRotation reports whether got is want rotated (both may be empty).
func isRotation(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	if len(got) == 0 {
		return true
	}
	i := slices.Index(want, got[0])
	if i < 0 {
		return false
	}
	return slices.Equal(got, append(slices.Clone(want[i:]), want[:i]...))
}

func TestSnapshotChooseSpreads(t *testing.T) {
	const keys, stores = 200, 3
	p := Placements{Experts: map[ExpertKey]Entry{}}
	for k := range keys {
		p.Experts[ExpertKey{k / 64, k % 64}] = Entry{Replicas: reps("a", "b", "c")}
	}
	s := NewSnapshot(1, p, storesOf([]string{"a", "b", "c"}))
	// Two seeds must not pick the same first replica for every key, and one seed must spread over all
	// stores (the per-key offset), even when every key lists its replicas in the same order.
	differ := 0
	first := map[string]int{}
	for k := range p.Experts {
		a, b := s.Expert(k).Choose(1)[0].Store, s.Expert(k).Choose(2)[0].Store
		if a != b {
			differ++
		}
		first[a]++
	}
	if differ < keys/2 {
		t.Errorf("seeds 1 and 2 pick the same first replica for %d of %d keys", keys-differ, keys)
	}
	for _, st := range []string{"a", "b", "c"} {
		if n := first[st]; n < keys/stores/2 {
			t.Errorf("seed 1 picks %s first for %d of %d keys: %v", st, n, keys, first)
		}
	}
	// Successive seeds are a round robin over a key's replicas.
	counts := map[string]int{}
	for seed := range uint64(3 * 100) {
		counts[s.Expert(ExpertKey{0, 0}).Choose(seed)[0].Store]++
	}
	if !reflect.DeepEqual(counts, map[string]int{"a": 100, "b": 100, "c": 100}) {
		t.Errorf("seeds 0..299 pick first %v, want 100 each", counts)
	}
	// With one replica unready, the other two share its load evenly.
	s = NewSnapshot(2, Placements{Experts: map[ExpertKey]Entry{{0, 0}: {Replicas: reps("a", "b-", "c")}}}, storesOf([]string{"a", "b", "c"}))
	counts = map[string]int{}
	for seed := range uint64(100) {
		counts[s.Expert(ExpertKey{0, 0}).Choose(seed)[0].Store]++
	}
	if !reflect.DeepEqual(counts, map[string]int{"a": 50, "c": 50}) {
		t.Errorf("seeds 0..99 pick first %v, want 50 each", counts)
	}
}

func TestSnapshotImmutable(t *testing.T) {
	k, j := ExpertKey{0, 0}, ExpertKey{0, 1}
	p := Placements{
		Experts: map[ExpertKey]Entry{k: {Replicas: reps("a", "b")}, j: {Replicas: reps("c")}},
		Dense:   map[string]Entry{"00000": {Size: 5, Replicas: reps("a")}},
	}
	stores := storesOf([]string{"a", "b", "c"})
	s := NewSnapshot(1, p, stores)
	p.Experts[k].Replicas[0] = Replica{Store: "z"}
	p.Experts[ExpertKey{3, 3}] = Entry{Replicas: reps("x")}
	delete(p.Experts, j)
	stores["a"] = StoreAddr{GRPCAddr: "moved:1"}

	if got := names(s.Expert(k).Replicas); !slices.Equal(got, []string{"a", "b"}) || s.Expert(k).Replicas[0].GRPCAddr != "a:7070" {
		t.Fatalf("Replicas(k) = %v after the input changed", s.Expert(k).Replicas)
	}
	if s.Expert(ExpertKey{3, 3}) != nil || s.Len() != 3 || s.Expert(j) == nil || s.Dense("00000").Size != 5 || s.Dense("x") != nil {
		t.Fatalf("keys changed with the input: len %d", s.Len())
	}
	// An append to a returned slice (a misuse) must not reach another entry's replicas.
	_ = append(s.Expert(k).Replicas, Replica{Store: "evil"})
	_ = append(s.Expert(j).Replicas, Replica{Store: "evil"})
	if got := names(s.Expert(j).Replicas); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("Replicas(j) = %v after an append to another entry's slice", got)
	}
	// Choose's result belongs to the caller.
	c := s.Expert(k).Choose(0)
	c[0].Store = "mine"
	if slices.Contains(names(s.Expert(k).Choose(0)), "mine") {
		t.Fatal("Choose returned shared storage")
	}
}

func TestSnapshotNil(t *testing.T) {
	var p atomic.Pointer[Snapshot]
	s := p.Load() // before the first placement
	if s.Epoch() != 0 || s.Len() != 0 || s.Expert(ExpertKey{0, 0}) != nil || s.Dense("x") != nil {
		t.Fatal("nil snapshot not empty")
	}
}

// Readers share one snapshot while a writer publishes new ones: run with -race.
func TestSnapshotConcurrent(t *testing.T) {
	var p atomic.Pointer[Snapshot]
	k := ExpertKey{0, 0}
	stores := storesOf([]string{"a", "b", "c"})
	p.Store(NewSnapshot(0, Placements{Experts: map[ExpertKey]Entry{k: {Replicas: reps("a", "b")}}}, stores))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				s := p.Load()
				if got := s.Expert(k).Choose(uint64(w*1000 + i)); len(got) != 2 {
					t.Errorf("epoch %d: Choose = %v", s.Epoch(), got)
					return
				}
			}
		})
	}
	for e := range int64(50) {
		p.Store(NewSnapshot(e+1, Placements{Experts: map[ExpertKey]Entry{k: {Replicas: reps("b", "c")}}}, stores))
	}
	wg.Wait()
}

func BenchmarkChoose(b *testing.B) {
	p := Placements{Experts: map[ExpertKey]Entry{}}
	for k := range 1000 {
		p.Experts[ExpertKey{k / 64, k % 64}] = Entry{Replicas: reps("store-1", "store-2", "store-3")}
	}
	s := NewSnapshot(1, p, storesOf([]string{"store-1", "store-2", "store-3"}, "store-2"))
	var seed uint64
	for b.Loop() {
		seed++
		_ = s.Expert(ExpertKey{3, 17}).Choose(seed)
	}
}

func BenchmarkNewSnapshot(b *testing.B) {
	// DeepSeek-V3's 58 MoE layers × 256 experts, R = 2 of 8 stores.
	p := Placements{Experts: map[ExpertKey]Entry{}}
	all := []string{"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"}
	for blk := range 58 {
		for e := range 256 {
			p.Experts[ExpertKey{blk, e}] = Entry{Size: 44 << 20, Replicas: reps(all[(blk+e)%8], all[(blk+e+3)%8])}
		}
	}
	stores := storesOf(all)
	for b.Loop() {
		_ = NewSnapshot(1, p, stores)
	}
	b.ReportMetric(float64(len(p.Experts)), "experts")
}
