package routing

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func TestSnapshotChoose(t *testing.T) {
	placement := map[string][]Replica{
		"k": {{"a", true}, {"b", false}, {"c", true}, {"d", true}},
	}
	s := NewSnapshot(7, placement)
	down := func(names ...string) func(string) bool {
		return func(store string) bool { return !slices.Contains(names, store) }
	}
	tests := []struct {
		name    string
		key     string
		healthy func(string) bool
		// want lists the acceptable results as sets of orders (rotation decides among them).
		wantHealthy, wantUnhealthy []string
	}{
		{name: "all healthy", key: "k", wantHealthy: []string{"a", "c", "d"}},
		{name: "nil health = all", key: "k", healthy: nil, wantHealthy: []string{"a", "c", "d"}},
		{name: "one down", key: "k", healthy: down("c"), wantHealthy: []string{"a", "d"}, wantUnhealthy: []string{"c"}},
		{name: "unready never", key: "k", healthy: down("a", "d"), wantHealthy: []string{"c"}, wantUnhealthy: []string{"a", "d"}},
		{name: "all down", key: "k", healthy: down("a", "c", "d"), wantUnhealthy: []string{"a", "c", "d"}},
		{name: "unknown key", key: "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for seed := range uint64(8) {
				got := s.Choose(tt.key, seed, tt.healthy)
				nh := len(tt.wantHealthy)
				if len(got) != nh+len(tt.wantUnhealthy) {
					t.Fatalf("seed %d: %v, want %v then %v", seed, got, tt.wantHealthy, tt.wantUnhealthy)
				}
				if len(got) == 0 {
					if got != nil {
						t.Fatalf("empty result %#v, want nil", got)
					}
					continue
				}
				// Healthy first, each group a rotation of its placement order.
				if !isRotation(got[:nh], tt.wantHealthy) || !isRotation(got[nh:], tt.wantUnhealthy) {
					t.Fatalf("seed %d: %v, want a rotation of %v then of %v", seed, got, tt.wantHealthy, tt.wantUnhealthy)
				}
			}
		})
	}
	if s.Epoch() != 7 || s.Len() != 1 {
		t.Fatalf("epoch %d len %d", s.Epoch(), s.Len())
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
	placement := map[string][]Replica{}
	for k := range keys {
		placement[fmt.Sprintf("m/0/%d", k)] = []Replica{{"a", true}, {"b", true}, {"c", true}}
	}
	s := NewSnapshot(1, placement)
	// Two seeds must not pick the same first replica for every key, and one seed must spread over all
	// stores (the per-key offset), even when every key lists its replicas in the same order.
	differ := 0
	first := map[string]int{}
	for key := range placement {
		a, b := s.Choose(key, 1, nil)[0], s.Choose(key, 2, nil)[0]
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
		counts[s.Choose("m/0/0", seed, nil)[0]]++
	}
	if !reflect.DeepEqual(counts, map[string]int{"a": 100, "b": 100, "c": 100}) {
		t.Errorf("seeds 0..299 pick first %v, want 100 each", counts)
	}
	// With one replica unready, the other two share its load evenly.
	s = NewSnapshot(2, map[string][]Replica{"k": {{"a", true}, {"b", false}, {"c", true}}})
	counts = map[string]int{}
	for seed := range uint64(100) {
		counts[s.Choose("k", seed, nil)[0]]++
	}
	if !reflect.DeepEqual(counts, map[string]int{"a": 50, "c": 50}) {
		t.Errorf("seeds 0..99 pick first %v, want 50 each", counts)
	}
}

func TestSnapshotImmutable(t *testing.T) {
	placement := map[string][]Replica{
		"k": {{"a", true}, {"b", true}},
		"j": {{"c", true}},
	}
	s := NewSnapshot(1, placement)
	placement["k"][0] = Replica{"z", false}
	placement["k"] = append(placement["k"], Replica{"y", true})
	placement["new"] = []Replica{{"x", true}}
	delete(placement, "j")

	if got := s.Replicas("k"); !reflect.DeepEqual(got, []Replica{{"a", true}, {"b", true}}) {
		t.Fatalf("Replicas(k) = %v after the input changed", got)
	}
	if s.Replicas("new") != nil || s.Len() != 2 || s.Replicas("j") == nil {
		t.Fatalf("keys changed with the input: len %d", s.Len())
	}
	// An append to a returned slice (a misuse) must not reach another key's replicas.
	_ = append(s.Replicas("k"), Replica{"evil", true})
	_ = append(s.Replicas("j"), Replica{"evil", true})
	if got := s.Replicas("j"); !reflect.DeepEqual(got, []Replica{{"c", true}}) {
		t.Fatalf("Replicas(j) = %v after an append to another key's slice", got)
	}
	if got := s.Choose("k", 0, nil); len(got) != 2 || slices.Contains(got, "evil") {
		t.Fatalf("Choose(k) = %v", got)
	}
	// Choose's result belongs to the caller.
	c := s.Choose("k", 0, nil)
	c[0] = "mine"
	if slices.Contains(s.Choose("k", 0, nil), "mine") {
		t.Fatal("Choose returned shared storage")
	}
}

func TestSnapshotNil(t *testing.T) {
	var p atomic.Pointer[Snapshot]
	s := p.Load() // before the first placement
	if s.Epoch() != 0 || s.Len() != 0 || s.Replicas("k") != nil || s.Choose("k", 1, nil) != nil {
		t.Fatal("nil snapshot not empty")
	}
}

// Readers share one snapshot while a writer publishes new ones: run with -race.
func TestSnapshotConcurrent(t *testing.T) {
	var p atomic.Pointer[Snapshot]
	p.Store(NewSnapshot(0, map[string][]Replica{"k": {{"a", true}, {"b", true}}}))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				s := p.Load()
				if got := s.Choose("k", uint64(w*1000+i), nil); len(got) != 2 {
					t.Errorf("epoch %d: Choose = %v", s.Epoch(), got)
					return
				}
			}
		})
	}
	for e := range int64(50) {
		p.Store(NewSnapshot(e+1, map[string][]Replica{"k": {{"b", true}, {"c", true}}}))
	}
	wg.Wait()
}

func BenchmarkChoose(b *testing.B) {
	placement := map[string][]Replica{}
	for k := range 1000 {
		placement[fmt.Sprintf("m/%d/%d", k/64, k%64)] = []Replica{{"store-1", true}, {"store-2", true}, {"store-3", true}}
	}
	s := NewSnapshot(1, placement)
	healthy := func(store string) bool { return store != "store-2" }
	var seed uint64
	for b.Loop() {
		seed++
		_ = s.Choose("m/3/17", seed, healthy)
	}
}
