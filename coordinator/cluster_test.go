package coordinator_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
	"github.com/pregate/pregate/routing"
)

// leakOptions are the goroutines the package's tests may leave: etcd's client keeps a resolver
// goroutine per process and zap's sink buffers for a while.
var leakOptions = []goleak.Option{
	goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakOptions...)
}

func startCluster(t *testing.T, stores int, replicas int, capacity int64) *cluster.Local {
	t.Helper()
	return startClusterWith(t, cluster.Config{Stores: stores, Replicas: replicas, StoreCapacity: capacity})
}

// startClusterWith starts cfg (Fast, in a temporary directory) and waits for its stores and leader.
func startClusterWith(t *testing.T, cfg cluster.Config) *cluster.Local {
	t.Helper()
	cfg.Dir, cfg.Fast = t.TempDir(), true
	stores := cfg.Stores
	lc, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	waitStatus(t, lc, 15*time.Second, "stores alive", func(st *coordinator.Status) bool {
		return st.Summary.StoresAlive == stores && st.Summary.Leader != ""
	})
	return lc
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func readStatus(t *testing.T, lc *cluster.Local) *coordinator.Status {
	t.Helper()
	st, err := coordinator.ReadStatus(ctxFor(t, 10*time.Second), lc.Etcd(), lc.Placement(), 2)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func waitStatus(t *testing.T, lc *cluster.Local, within time.Duration, what string, cond func(*coordinator.Status) bool) *coordinator.Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := readStatus(t, lc)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("timed out after %v waiting for %s; status:\n%s", within, what, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitConverged waits until every blob has min(R, targets) ready replicas, no copy is in flight,
// draining stores hold nothing, and the leader's latest pass found nothing to do.
func waitConverged(t *testing.T, lc *cluster.Local, targets int) *coordinator.Status {
	t.Helper()
	return waitStatus(t, lc, 30*time.Second, "convergence", func(st *coordinator.Status) bool {
		if st.Summary.ExpertsUnderReplicated > 0 || st.Summary.DenseUnderReplicated > 0 || st.Summary.CopiesInFlight > 0 {
			return false
		}
		n := 0
		for _, s := range st.Stores {
			if s.Draining && s.Blobs > 0 {
				return false
			}
			if (s.State == placement.StoreAlive) && !s.Draining {
				n++
			}
		}
		for _, co := range lc.Coordinators() {
			if co.IsLeader() {
				p := co.LastPass()
				return n == targets && !p.Pending() && p.CopyErrors == 0 && p.CopiesDeferred == 0 && p.TargetStores == targets
			}
		}
		return false
	})
}

// synthModel writes a Mixtral-shaped checkpoint with many small experts (16 blocks × 32).
func synthModel(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	err := synth.Write(synth.Options{Arch: "mixtral", Preset: "mixtral-tiny", Out: dir, DType: model.F32, Seed: 7,
		Layers: 16, Experts: 32, DModel: 32, DFF: 64, Vocab: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func importModel(t *testing.T, lc *cluster.Local, dir, name string) coordinator.ImportReport {
	t.Helper()
	rep, err := coordinator.Import(ctxFor(t, 60*time.Second), lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// bytesOn sums the sizes of the blobs whose ready replicas include store.
func bytesOn(t *testing.T, lc *cluster.Local, model, store string) int64 {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	ps := lc.Placement()
	exp, _, _, err := ps.Placements(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	dense, _, _, err := ps.DensePlacements(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range append(slices.Collect(mapValues(exp)), slices.Collect(mapValues(dense))...) {
		if slices.Contains(p.Ready(), store) {
			n += p.Size
		}
	}
	return n
}

func mapValues[K comparable, V any](m map[K]V) func(func(V) bool) {
	return func(yield func(V) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// invariant watches every placement write and records any that leaves a blob with fewer ready
// replicas on the stores that are up than min(R, stores up).
type invariant struct {
	mu         sync.Mutex
	up         map[string]bool
	r          int
	events     int
	violations []string
	cancel     context.CancelFunc
	done       chan struct{}
}

func watchInvariant(t *testing.T, lc *cluster.Local, r int, up []string) *invariant {
	inv := &invariant{up: map[string]bool{}, r: r, done: make(chan struct{})}
	for _, s := range up {
		inv.up[s] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	inv.cancel = cancel
	ps := lc.Placement()
	wch := lc.Etcd().Watch(ctx, ps.Prefix()+"models/", clientv3.WithPrefix())
	go func() {
		defer close(inv.done)
		for wr := range wch {
			for _, ev := range wr.Events {
				if _, err := ps.ParseKey(string(ev.Kv.Key)); err != nil {
					continue // a manifest
				}
				if ev.Type != clientv3.EventTypePut {
					inv.violate("deleted " + string(ev.Kv.Key))
					continue
				}
				var p placement.Placement
				if err := json.Unmarshal(ev.Kv.Value, &p); err != nil {
					inv.violate(err.Error())
					continue
				}
				inv.check(string(ev.Kv.Key), p)
			}
		}
	}()
	return inv
}

func (inv *invariant) violate(s string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.violations = append(inv.violations, s)
}

func (inv *invariant) check(key string, p placement.Placement) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.events++
	n := 0
	for _, s := range p.Ready() {
		if inv.up[s] {
			n++
		}
	}
	if want := min(inv.r, len(inv.up)); n < want {
		inv.violations = append(inv.violations, key+": "+strings.Join(p.Ready(), ",")+" ready")
	}
}

func (inv *invariant) setUp(store string, up bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if up {
		inv.up[store] = true
	} else {
		delete(inv.up, store)
	}
}

func (inv *invariant) stop(t *testing.T) {
	t.Helper()
	inv.cancel()
	<-inv.done
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if len(inv.violations) > 0 {
		t.Errorf("%d placement writes left a blob below min(R, live) ready replicas; first: %s", len(inv.violations), inv.violations[0])
	}
	if inv.events == 0 {
		t.Error("the invariant watch saw no placement write")
	}
	t.Logf("invariant held over %d placement writes", inv.events)
}

// verifyStoresHoldPlacement checks that every ready replica's store really has the blob.
func verifyStoresHoldPlacement(t *testing.T, lc *cluster.Local, model string) {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	ps := lc.Placement()
	exp, _, _, err := ps.Placements(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	cl := client.New(client.DefaultConfig())
	defer cl.Close()
	checked := 0
	for k, p := range exp {
		for _, s := range p.Ready() {
			srv := lc.Store(s)
			if srv == nil {
				t.Fatalf("expert %v: ready replica on %s, which is not running", k, s)
			}
			has, err := cl.Has(ctx, routing.Replica{Store: s, GRPCAddr: srv.Addr()}, p.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if !has[0] {
				t.Fatalf("expert %v: placement says %s holds %s; it does not", k, s, p.Digest)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no replica checked")
	}
}

func TestScaleOutScaleInAndKill(t *testing.T) {
	const r = 2
	lc := startCluster(t, 3, r, 256<<20)
	dir := synthModel(t)
	rep := importModel(t, lc, dir, "moe")
	if !rep.Published || rep.Uploaded != rep.Blobs*r {
		t.Fatalf("import: %+v, want published with %d uploads", rep, rep.Blobs*r)
	}
	st := waitConverged(t, lc, 3)
	if got := lc.Coordinator().BytesCopied(); got != 0 {
		t.Errorf("the coordinator copied %d bytes after the import: import and coordinator disagree on placement", got)
	}
	if st.Models[0].Experts != 16*32 || st.Models[0].Replicas != r {
		t.Fatalf("model status %+v", st.Models[0])
	}
	verifyStoresHoldPlacement(t, lc, "moe")
	total := int64(r) * rep.Bytes

	// 3 → 5.
	inv := watchInvariant(t, lc, r, lc.StoreNames())
	before := lc.Coordinator().BytesCopied()
	for range 2 {
		s, err := lc.AddStore()
		if err != nil {
			t.Fatal(err)
		}
		inv.setUp(s.NodeName(), true)
	}
	waitConverged(t, lc, 5)
	moved := lc.Coordinator().BytesCopied() - before
	minimum := float64(total) * 2 / 5 // equal capacities: the new stores' share of every replica
	t.Logf("scale 3→5: moved %d bytes, theoretical minimum %.0f: ratio %.3f; coordinator %+v", moved, minimum, float64(moved)/minimum,
		lc.Coordinator().Counters())
	if ratio := float64(moved) / minimum; ratio > 1.1 || ratio < 0.9 {
		t.Errorf("scale 3→5 moved %.3fx the theoretical minimum, want within [0.9, 1.1]", ratio)
	}
	for _, s := range []string{"store-3", "store-4"} {
		if bytesOn(t, lc, "moe", s) == 0 {
			t.Errorf("new store %s got nothing", s)
		}
	}

	// 5 → 3: drain two stores (an old one and a new one), then stop them.
	drained := []string{"store-0", "store-3"}
	var held int64
	for _, s := range drained {
		held += bytesOn(t, lc, "moe", s)
	}
	before = lc.Coordinator().BytesCopied()
	// Both marks in one Txn: marked one by one, a pass between them would move store-0's blobs
	// partly onto store-3, which then moves them again (1.115× the minimum in 1 run of 6).
	if err := lc.Placement().SetDrain(ctxFor(t, 5*time.Second), true, drained...); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, lc, 3)
	moved = lc.Coordinator().BytesCopied() - before
	t.Logf("scale 5→3 (drain): moved %d bytes, theoretical minimum %d (the drained stores' bytes): ratio %.3f; coordinator %+v",
		moved, held, float64(moved)/float64(held), lc.Coordinator().Counters())
	if ratio := float64(moved) / float64(held); ratio > 1.1 || ratio < 1 {
		t.Errorf("scale 5→3 moved %.3fx the theoretical minimum, want within [1, 1.1]", ratio)
	}
	for _, s := range drained {
		if n := lc.Store(s).Stats().Blobs; n != 0 {
			t.Errorf("drained store %s still holds %d blobs", s, n)
		}
		if err := lc.StopStore(s); err != nil {
			t.Fatal(err)
		}
		inv.setUp(s, false)
	}
	waitStatus(t, lc, 15*time.Second, "drained stores forgotten", func(st *coordinator.Status) bool {
		return len(st.Stores) == 3 && st.Summary.StoresAlive == 3
	})
	inv.stop(t)
	verifyStoresHoldPlacement(t, lc, "moe")

	// Kill a store: R is restored from the survivors.
	victim := "store-1"
	if err := lc.KillStore(victim); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, lc, 15*time.Second, "the killed store seen dead", func(st *coordinator.Status) bool {
		return st.Summary.StoresDead == 1
	})
	st = waitConverged(t, lc, 2)
	if st.Summary.ExpertsUnavailable != 0 || !st.Summary.Healthy {
		t.Fatalf("after the kill: %+v", st.Summary)
	}
	if n := bytesOn(t, lc, "moe", victim); n != 0 {
		t.Errorf("placement still names the dead store for %d bytes", n)
	}
	verifyStoresHoldPlacement(t, lc, "moe")
}

func TestImportFixturesIdempotent(t *testing.T) {
	// The importer's own repair of a lost blob is under test: the coordinator's (anti-entropy, which
	// would copy it back first when another model shares its bytes) is kept out of the way.
	lc := startClusterWith(t, cluster.Config{Stores: 3, Replicas: 2, StoreCapacity: 256 << 20,
		Coordinator: func(c *coordinator.Config) { c.AntiEntropyInterval = time.Hour }})
	for _, fx := range []string{"switch-tiny", "mixtral-tiny"} {
		dir := filepath.Join("..", "testdata", fx)
		rep := importModel(t, lc, dir, fx)
		if !rep.Published || rep.UploadedBytes != 2*rep.Bytes {
			t.Fatalf("%s: first import %+v", fx, rep)
		}
		again := importModel(t, lc, dir, fx)
		if again.Published || again.Uploaded != 0 || again.UploadedBytes != 0 || again.InPlace != again.Blobs {
			t.Fatalf("%s: re-import moved something: %+v", fx, again)
		}
		ckpt, err := model.OpenCheckpoint(dir)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := lc.Placement().Manifest(ctxFor(t, 5*time.Second), fx)
		if err != nil {
			t.Fatal(err)
		}
		layout := model.MoELayout(ckpt.Config())
		ckpt.Close()
		if m.Blocks != len(layout) || m.NumExperts() != len(layout)*len(layout[0].Experts) || len(m.Dense) == 0 || m.Arch != ckpt.Config().ModelType {
			t.Fatalf("%s: manifest %d blocks, %d experts, %d dense, arch %s", fx, m.Blocks, m.NumExperts(), len(m.Dense), m.Arch)
		}
	}
	// A store that lost a blob (restarted empty, disk replaced): re-importing puts it back.
	ps := lc.Placement()
	exp, _, _, err := ps.Placements(ctxFor(t, 5*time.Second), "switch-tiny")
	if err != nil {
		t.Fatal(err)
	}
	lost := exp[routing.ExpertKey{Block: 0, Expert: 0}]
	cl := client.New(client.DefaultConfig())
	defer cl.Close()
	for _, s := range lost.Ready() {
		if _, err := cl.Delete(ctxFor(t, 5*time.Second), routing.Replica{Store: s, GRPCAddr: lc.Store(s).Addr()}, lost.Digest); err != nil {
			t.Fatal(err)
		}
	}
	again := importModel(t, lc, filepath.Join("..", "testdata", "switch-tiny"), "switch-tiny")
	if again.Uploaded != 2 || again.InPlace != again.Blobs-1 || !again.Published {
		t.Fatalf("re-import after a lost blob: %+v, want 2 uploads of it and the rest in place", again)
	}
	st := waitConverged(t, lc, 3)
	if st.Summary.Models != 2 || lc.Coordinator().BytesCopied() != 0 {
		t.Fatalf("models %d, coordinator copied %d bytes", st.Summary.Models, lc.Coordinator().BytesCopied())
	}
	verifyStoresHoldPlacement(t, lc, "switch-tiny")
}

func TestMalformedImportPublishesNothing(t *testing.T) {
	lc := startCluster(t, 2, 2, 64<<20)
	src := filepath.Join("..", "testdata", "switch-tiny")
	cases := map[string]func(dir string){
		"truncated safetensors": func(dir string) {
			p := filepath.Join(dir, "model.safetensors")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2], 0o644)
		},
		"missing tensor config": func(dir string) {
			p := filepath.Join(dir, "config.json")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"num_experts": 8`, `"num_experts": 9`, 1)), 0o644)
		},
		"not a checkpoint": func(dir string) {
			os.Remove(filepath.Join(dir, "config.json"))
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, src, dir)
			corrupt(dir)
			_, err := coordinator.Import(ctxFor(t, 30*time.Second), lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: "bad"})
			if err == nil {
				t.Fatal("import of a malformed checkpoint succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, model.ErrCheckpoint) && !errors.Is(err, model.ErrConfig) && !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q names neither the problem kind nor the checkpoint", err)
			}
		})
	}
	resp, err := lc.Etcd().Get(ctxFor(t, 5*time.Second), lc.Placement().Prefix()+"models/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Fatalf("a failed import left %d keys under models/", resp.Count)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestImportTokenizer: an unsupported tokenizer is left out of the manifest (the model is served by
// token ids), a broken one or one larger than the model's vocabulary fails the import. (A tokenizer
// that fits travels to the worker: worker's TestWorkerLoadsTheTokenizer.)
func TestImportTokenizer(t *testing.T) {
	lc := startCluster(t, 2, 2, 64<<20)
	spm, err := os.ReadFile(filepath.Join("..", "model", "tokenizer", "testdata", "unigram", "spiece.model"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		file    string
		content []byte
		wantErr string // "": imported, without a tokenizer in the manifest
	}{
		{"unsupported", "tokenizer.json", []byte(`{"model": {"type": "WordPiece", "vocab": {}}}`), ""},
		{"broken", "tokenizer.json", []byte(`{"model": `), "tokenizer.json"},
		{"larger than the model", "spiece.model", spm, "more than the model's vocab_size 512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, filepath.Join("..", "testdata", "switch-tiny"), dir)
			if err := os.WriteFile(filepath.Join(dir, tt.file), tt.content, 0o644); err != nil {
				t.Fatal(err)
			}
			name := "tok-" + strings.ReplaceAll(tt.name, " ", "-")
			_, err := coordinator.Import(ctxFor(t, 30*time.Second), lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: name})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("import: %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := lc.Placement().Manifest(ctxFor(t, 5*time.Second), name)
			if err != nil || m.Tokenizer != "" || m.ChatTemplate != "" {
				t.Fatalf("manifest tokenizer %q, chat template %q, err %v", m.Tokenizer, m.ChatTemplate, err)
			}
		})
	}
}
