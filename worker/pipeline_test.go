package worker

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/internal/golden"
	"github.com/pregate/pregate/internal/modelblobs"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blobFetcher serves a checkpoint's expert blobs from memory, as a store would after import (the
// same blobs modelblobs makes), optionally taking delay per fetch to act as a slow link.
type blobFetcher struct {
	blobs     map[routing.ExpertKey][]byte
	delay     time.Duration
	fetches   atomic.Int64
	cancelled atomic.Int64 // fetches whose context ended while they waited
}

func newBlobFetcher(t *testing.T, ckpt *model.Checkpoint) *blobFetcher {
	t.Helper()
	f := &blobFetcher{blobs: map[routing.ExpertKey][]byte{}}
	err := modelblobs.Split(ckpt, "m", 0, func(b modelblobs.Blob) error {
		if b.Header.Kind == blob.KindExpert {
			f.blobs[routing.ExpertKey{Block: b.Header.Block, Expert: b.Header.Expert}] = b.Data
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *blobFetcher) Size(k routing.ExpertKey) int64 { return int64(len(f.blobs[k])) }

func (f *blobFetcher) Fetch(ctx context.Context, k routing.ExpertKey, dst []byte) error {
	f.fetches.Add(1)
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			f.cancelled.Add(1)
			return ctx.Err()
		}
	}
	b, ok := f.blobs[k]
	if !ok {
		return fmt.Errorf("no expert %v", k)
	}
	copy(dst, b)
	return nil
}

func fixture(name string) string { return filepath.Join("..", "testdata", name) }

// goldenPrompts returns a fixture's unpadded prompts and HF's generated ids for them.
func goldenPrompts(t *testing.T, dir string) (prompts, want [][]int) {
	t.Helper()
	prompts, want, err := golden.Prompts(dir)
	if err != nil {
		t.Fatal(err)
	}
	return prompts, want
}

type pipelineModel struct {
	engine.Model
	p     *Pipeline
	fetch *blobFetcher
}

// loadPipelined loads dir's model on a pipeline in mode, whose expert fetches take delay each;
// tracer sees the engine's routing decisions, steps the pipeline's steps (either may be nil).
func loadPipelined(t *testing.T, dir string, mode Mode, budget int64, delay time.Duration, tracer engine.Tracer, steps Tracer) pipelineModel {
	t.Helper()
	return loadPipelinedWith(t, dir, PipelineConfig{Mode: mode, CacheBudget: budget, Tracer: steps}, delay, tracer)
}

// loadPipelinedWith is loadPipelined with more of the pipeline's config: cfg's device, fetcher and
// model shape are filled in.
func loadPipelinedWith(t *testing.T, dir string, cfg PipelineConfig, delay time.Duration, tracer engine.Tracer) pipelineModel {
	t.Helper()
	mode := cfg.Mode
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ckpt.Close() })
	f := newBlobFetcher(t, ckpt)
	f.delay = delay
	names, n := model.ExpertNames(ckpt.Config()), model.ExpertsPerBlock(ckpt.Config())
	dev := NewCPU()
	t.Cleanup(func() { dev.Close() })
	cfg.Device, cfg.Fetcher, cfg.Names, cfg.NumExperts = dev, f, names, n
	p, err := NewPipeline(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	cpu := compute.NewCPU(2)
	t.Cleanup(cpu.Close)
	m, err := engine.Load(ckpt, cpu, engine.Options{Experts: p, Speculate: mode.Speculates(), Tracer: tracer})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckMode(mode, m.Info().PreGated); err != nil {
		t.Fatal(err)
	}
	return pipelineModel{Model: WrapModel(m, p), p: p, fetch: f}
}

func modesFor(preGated bool) []Mode {
	var out []Mode
	for _, m := range Modes {
		if CheckMode(m, preGated) == nil {
			out = append(out, m)
		}
	}
	return out
}

func TestEveryModeGivesTheGoldenTokens(t *testing.T) {
	for _, fx := range []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"} {
		prompts, want := goldenPrompts(t, fixture(fx))
		for _, mode := range modesFor(fx == "switch-tiny-pregated") {
			t.Run(fx+"/"+string(mode), func(t *testing.T) {
				m := loadPipelined(t, fixture(fx), mode, 64<<20, 0, nil, nil)
				res, _, err := engine.Generate(context.Background(), m, prompts, engine.GenerateOptions{MaxNewTokens: 10})
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range res {
					if !slices.Equal(r.GeneratedIDs, want[i]) {
						t.Errorf("prompt %d: %v, want %v", i, r.GeneratedIDs, want[i])
					}
				}
				stats := m.p.Stats()
				var fetched, misses, predHits, predMisses int64
				for _, s := range stats {
					fetched += s.Fetches
					misses += s.CacheMisses
					predHits += s.PredictionHits
					predMisses += s.PredictionMisses
				}
				t.Logf("fetches %d, misses %d, prediction hits %d misses %d, cache %+v", fetched, misses, predHits, predMisses, m.p.Cache().Stats())
				switch mode {
				case ModeResident:
					if fetched != int64(len(m.fetch.blobs)) || misses != 0 {
						t.Errorf("resident: %d fetches for %d experts, %d misses", fetched, len(m.fetch.blobs), misses)
					}
				case ModePregated:
					// Pre-gates are exact; the first block's guesses for the next step may miss.
					var gateHits, gateMisses int64
					for b, s := range stats {
						if routedByPreGate(m.Info(), b) {
							gateHits, gateMisses = gateHits+s.PredictionHits, gateMisses+s.PredictionMisses
						}
					}
					if gateMisses != 0 || gateHits == 0 {
						t.Errorf("pregated: %d prediction misses, %d hits in blocks routed by pre-gates", gateMisses, gateHits)
					}
					for b, s := range stats {
						if m.Info().MoEBlocks[b].PreGateFor < 0 && b > 0 && m.Info().MoEBlocks[b-1].PreGateFor == b {
							continue
						}
						if routedByPreGate(m.Info(), b) && s.CacheMisses != 0 {
							t.Errorf("pregated: block %d (routed by a pre-gate) had %d misses", b, s.CacheMisses)
						}
					}
				case ModeSpeculative:
					if predHits == 0 {
						t.Errorf("speculative: no prediction hit")
					}
				}
			})
		}
	}
}

func routedByPreGate(info engine.Info, b int) bool {
	for _, blk := range info.MoEBlocks {
		if blk.PreGateFor == b {
			return true
		}
	}
	return false
}

// usedTracer records, per Step, the experts each MoE block used.
type usedTracer struct {
	mu    sync.Mutex
	steps []map[int][]int
}

func (u *usedTracer) Route(block int, _ []float32, choices []routing.Choice) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.steps) == 0 || u.steps[len(u.steps)-1][block] != nil {
		u.steps = append(u.steps, map[int][]int{})
	}
	seen := map[int]bool{}
	var used []int
	for _, c := range choices {
		if !seen[c.Expert] {
			seen[c.Expert] = true
			used = append(used, c.Expert)
		}
	}
	u.steps[len(u.steps)-1][block] = used
}

func TestPregatedPeakIsTwoBlocksOfActiveExperts(t *testing.T) {
	dir := fixture("switch-tiny-pregated")
	prompts, _ := goldenPrompts(t, dir)
	prompt := prompts[:1]

	// A reference run finds what each block uses; the budget is then exactly the most that two
	// consecutive blocks (one routed by the other's pre-gate) use together: no spare slot.
	tr := &usedTracer{}
	ref := loadPipelined(t, dir, ModeResident, 64<<20, 0, tr, nil)
	want, _, err := engine.Generate(context.Background(), ref, prompt, engine.GenerateOptions{MaxNewTokens: 10, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	size := ref.fetch.Size(routing.ExpertKey{Block: 0, Expert: 0})
	info := ref.Info()
	var need int64
	for _, step := range tr.steps {
		for b, blk := range info.MoEBlocks {
			if next := blk.PreGateFor; next >= 0 && step[b] != nil && step[next] != nil {
				need = max(need, int64(len(step[b])+len(step[next]))*size)
			}
		}
	}
	if need == 0 {
		t.Fatal("no pre-gated block pair in the trace")
	}

	m := loadPipelined(t, dir, ModePregated, need, 2*time.Millisecond, nil, nil)
	got, _, err := engine.Generate(context.Background(), m, prompt, engine.GenerateOptions{MaxNewTokens: 10, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[0].GeneratedIDs, want[0].GeneratedIDs) {
		t.Fatalf("tokens %v, want %v", got[0].GeneratedIDs, want[0].GeneratedIDs)
	}
	cs := m.p.Cache().Stats()
	t.Logf("budget %d (%d experts of %d bytes), peak %d, evictions %d", need, need/size, size, cs.Peak, cs.Evictions)
	if cs.Peak != need {
		t.Errorf("peak expert bytes %d, want two blocks' worth of active experts: %d", cs.Peak, need)
	}
	if cs.Evictions == 0 {
		t.Error("a budget of two blocks never evicted")
	}
}

func TestBudgetTooSmall(t *testing.T) {
	ckpt, err := model.OpenCheckpoint(fixture("mixtral-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	f := newBlobFetcher(t, ckpt)
	names, n := model.ExpertNames(ckpt.Config()), model.ExpertsPerBlock(ckpt.Config())
	dev := NewCPU()
	defer dev.Close()
	size := f.Size(routing.ExpertKey{Block: 0, Expert: 0})
	for _, tt := range []struct {
		mode   Mode
		budget int64
	}{{ModeOnDemand, size - 1}, {ModeResident, size * 4}} {
		_, err := NewPipeline(context.Background(), PipelineConfig{Mode: tt.mode, Device: dev, Fetcher: f, Names: names, NumExperts: n, CacheBudget: tt.budget})
		if err == nil {
			t.Errorf("%s with a %d-byte budget: no error", tt.mode, tt.budget)
		}
	}
}

// stagedCPU is the CPU device presented as a discrete one: fetches go through the pinned staging
// buffers and the copy stream, as on a GPU.
type stagedCPU struct{ *CPU }

func (stagedCPU) HostAddressable() bool { return false }

// generateGolden loads ckpt on a 2-thread CPU with opts (its experts from p) and checks that 10
// greedy tokens of each prompt are want's.
func generateGolden(t *testing.T, ckpt *model.Checkpoint, p *Pipeline, opts engine.Options, prompts, want [][]int) {
	t.Helper()
	cpu := compute.NewCPU(2)
	defer cpu.Close()
	m, err := engine.Load(ckpt, cpu, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, _, err := engine.Generate(context.Background(), WrapModel(m, p), prompts, engine.GenerateOptions{MaxNewTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !slices.Equal(r.GeneratedIDs, want[i]) {
			t.Errorf("prompt %d: %v, want %v", i, r.GeneratedIDs, want[i])
		}
	}
}

func TestStagedCopyPathGivesTheGoldenTokens(t *testing.T) {
	dir := fixture("mixtral-tiny")
	prompts, want := goldenPrompts(t, dir)
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	f := newBlobFetcher(t, ckpt)
	names, n := model.ExpertNames(ckpt.Config()), model.ExpertsPerBlock(ckpt.Config())
	dev := stagedCPU{NewCPU()}
	defer dev.Close()
	// A budget of three experts: the copy path runs with evictions and buffer reuse.
	p, err := NewPipeline(context.Background(), PipelineConfig{Mode: ModeSpeculative, Device: dev, Fetcher: f, Names: names,
		NumExperts: n, CacheBudget: 3 * f.Size(routing.ExpertKey{Block: 0, Expert: 0}), Staging: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	generateGolden(t, ckpt, p, engine.Options{Experts: p, Speculate: true}, prompts, want)
	if cs := p.Cache().Stats(); cs.Evictions == 0 || cs.Peak > cs.Budget {
		t.Errorf("cache %+v: want evictions within the budget", cs)
	}
}

// TestCancelStopsFetches: when the caller of a step goes away, the step returns at once and the
// expert fetches it started are cancelled, not left to finish (a slow link would otherwise keep
// moving bytes nobody wants).
func TestCancelStopsFetches(t *testing.T) {
	dir := fixture("mixtral-tiny")
	prompts, _ := goldenPrompts(t, dir)
	m := loadPipelined(t, dir, ModeSpeculative, 64<<20, 2*time.Second, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := engine.Generate(ctx, m, prompts, engine.GenerateOptions{MaxNewTokens: 10})
	if err == nil {
		t.Fatal("a cancelled generation succeeded")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the cancelled step took %v: it waited for its fetches", took)
	}
	deadline := time.Now().Add(2 * time.Second)
	for m.fetch.cancelled.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no fetch was cancelled (%d started)", m.fetch.fetches.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d fetches started, %d cancelled", m.fetch.fetches.Load(), m.fetch.cancelled.Load())
}

// stepLog records what a Tracer sees: the blocks routed, with -1 for a step's end.
type stepLog struct {
	mu     sync.Mutex
	blocks []int
	times  []time.Time
}

func (l *stepLog) Routed(block int, at time.Time) { l.add(block, at) }
func (l *stepLog) StepEnded(at time.Time)         { l.add(-1, at) }

func (l *stepLog) add(block int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.blocks, l.times = append(l.blocks, block), append(l.times, at)
}

// routeLog records the blocks the engine routed, in order.
type routeLog struct {
	mu     sync.Mutex
	blocks []int
}

func (l *routeLog) Route(block int, _ []float32, _ []routing.Choice) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.blocks = append(l.blocks, block)
}

// stepCounter counts the Starts and Steps of a model.
type stepCounter struct {
	engine.Model
	steps atomic.Int64
}

func (c *stepCounter) Start(ctx context.Context, prompts [][]int) ([]*engine.Sequence, error) {
	c.steps.Add(1)
	return c.Model.Start(ctx, prompts)
}

func (c *stepCounter) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	c.steps.Add(1)
	return c.Model.Step(ctx, seqs, all)
}

// TestTracerFollowsTheSteps: the pipeline's Tracer sees every block the engine routes, in the
// engine's order, and the end of every Start and Step, with times that never go back.
func TestTracerFollowsTheSteps(t *testing.T) {
	tests := []struct {
		fixture string
		mode    Mode
	}{
		{"switch-tiny-pregated", ModePregated},
		{"mixtral-tiny", ModeResident},
		{"mixtral-tiny", ModeSpeculative},
	}
	for _, tt := range tests {
		t.Run(tt.fixture+"/"+string(tt.mode), func(t *testing.T) {
			prompts, _ := goldenPrompts(t, fixture(tt.fixture))
			routes, steps := &routeLog{}, &stepLog{}
			m := loadPipelined(t, fixture(tt.fixture), tt.mode, 64<<20, 0, routes, steps)
			counted := &stepCounter{Model: m}
			if _, _, err := engine.Generate(context.Background(), counted, prompts, engine.GenerateOptions{MaxNewTokens: 5}); err != nil {
				t.Fatal(err)
			}
			var routed []int
			ends := 0
			for i, b := range steps.blocks {
				if b < 0 {
					ends++
				} else {
					routed = append(routed, b)
				}
				if i > 0 && steps.times[i].Before(steps.times[i-1]) {
					t.Errorf("event %d at %v, before the previous one (%v)", i, steps.times[i], steps.times[i-1])
				}
			}
			if !slices.Equal(routed, routes.blocks) {
				t.Errorf("the tracer saw blocks %v routed, the engine routed %v", routed, routes.blocks)
			}
			if want := counted.steps.Load(); int64(ends) != want || want < 2 {
				t.Errorf("%d step ends traced for %d Starts and Steps", ends, want)
			}
			// Hints of blocks the model does not have are not traced.
			n := len(steps.blocks)
			m.p.Hint(-1, nil)
			m.p.Hint(len(m.Info().MoEBlocks), []int{0})
			if len(steps.blocks) != n {
				t.Errorf("bad Hints traced: %v", steps.blocks[n:])
			}
		})
	}
}

// TestForeignBlobIsRefused serves, for one expert, a blob that is whole and well formed but not
// this model's (its w1 transposed, as a forged or mismatched manifest would name): Acquire refuses
// it naming the shapes, where computing with it would read past its end; the other experts load.
func TestForeignBlobIsRefused(t *testing.T) {
	ckpt, err := model.OpenCheckpoint(fixture("mixtral-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	cfg := ckpt.Config()
	f := newBlobFetcher(t, ckpt)
	names := model.ExpertNames(cfg)
	w1, w3, w2 := model.ExpertShapes(cfg)
	n1, n3, n2 := names(0, 0)
	mk := func(name string, shape [2]int) blob.Tensor {
		return blob.Tensor{Name: name, DType: "F32", Shape: []int{shape[0], shape[1]}, Data: make([]byte, 4*shape[0]*shape[1])}
	}
	forged, err := blob.Build(blob.Header{Kind: blob.KindExpert, Model: "m", Block: 0, Expert: 0},
		[]blob.Tensor{mk(n1, [2]int{w1[1], w1[0]}), mk(n3, w3), mk(n2, w2)})
	if err != nil {
		t.Fatal(err)
	}
	f.blobs[routing.ExpertKey{Block: 0, Expert: 0}] = forged
	// Expert (0, 2): the right shapes in bf16, where the manifest says f32.
	bf := func(name string, shape [2]int) blob.Tensor {
		return blob.Tensor{Name: name, DType: "BF16", Shape: []int{shape[0], shape[1]}, Data: make([]byte, 2*shape[0]*shape[1])}
	}
	m1, m3, m2 := names(0, 2)
	if f.blobs[routing.ExpertKey{Block: 0, Expert: 2}], err = blob.Build(blob.Header{Kind: blob.KindExpert, Model: "m", Block: 0, Expert: 2},
		[]blob.Tensor{bf(m1, w1), bf(m3, w3), bf(m2, w2)}); err != nil {
		t.Fatal(err)
	}
	dev := NewCPU()
	defer dev.Close()
	p, err := NewPipeline(context.Background(), PipelineConfig{Mode: ModeOnDemand, Device: dev, Fetcher: f, Names: names,
		NumExperts: model.ExpertsPerBlock(cfg), CacheBudget: 64 << 20, Shapes: [3][2]int{w1, w3, w2}, DType: "F32"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	if _, err := p.Acquire(ctx, 0, 0); err == nil || !strings.Contains(err.Error(), "the model's config wants") {
		t.Errorf("a transposed w1: %v, want a refusal naming the shapes", err)
	}
	if _, err := p.Acquire(ctx, 0, 2); err == nil || !strings.Contains(err.Error(), "is BF16, the model's manifest says F32") {
		t.Errorf("a bf16 blob for an f32 model: %v, want a refusal naming the dtypes", err)
	}
	w, err := p.Acquire(ctx, 0, 1)
	if err != nil || w.W1.Rows != w1[0] || w.W1.Cols != w1[1] {
		t.Fatalf("expert (0, 1): %+v, %v", w, err)
	}
	p.Release(0, 1)
}

// TestStepAheadPrefetchesTheFirstBlock: in pregated mode the first MoE block of the decoder, which
// no pre-gate routes, is predicted at the end of the step before (PredictNextStep): its Hints find
// predictions (counted as prediction hits and misses) and fewer cache misses than without the
// step-ahead guess, and the tokens stay HF's.
func TestStepAheadPrefetchesTheFirstBlock(t *testing.T) {
	dir := fixture("switch-tiny-pregated")
	prompts, want := goldenPrompts(t, dir)
	run := func(noStepAhead bool) (BlockStats, engine.Info) {
		// A budget of two experts: nothing survives in the cache from one step to the next, so
		// only a prefetch can make the first block's experts hits.
		probe := loadPipelined(t, dir, ModeResident, 64<<20, 0, nil, nil)
		var largest int64
		for _, b := range probe.fetch.blobs {
			largest = max(largest, int64(len(b)))
		}
		m := loadPipelinedWith(t, dir, PipelineConfig{Mode: ModePregated, CacheBudget: 2 * largest, NoStepAhead: noStepAhead}, 0, nil)
		var total BlockStats
		for i, p := range prompts { // one at a time: batch 1, as the benchmark decodes
			res, _, err := engine.Generate(context.Background(), m, [][]int{p}, engine.GenerateOptions{MaxNewTokens: 10})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res[0].GeneratedIDs, want[i]) {
				t.Errorf("step ahead %v, prompt %d: %v, want %v", !noStepAhead, i, res[0].GeneratedIDs, want[i])
			}
		}
		info := m.Info()
		first := slices.IndexFunc(info.MoEBlocks, func(b engine.MoEBlock) bool { return strings.HasPrefix(b.Name, "decoder.") })
		if first < 0 || routedByPreGate(info, first) {
			t.Fatalf("no first decoder MoE block in %+v", info.MoEBlocks)
		}
		total = m.p.Stats()[first]
		t.Logf("step ahead %v: first decoder block %d: %+v", !noStepAhead, first, total)
		return total, info
	}
	off, _ := run(true)
	on, _ := run(false)
	if off.PredictionHits+off.PredictionMisses != 0 {
		t.Errorf("without step ahead the first decoder block had predictions: %+v", off)
	}
	if on.PredictionHits == 0 {
		t.Errorf("with step ahead the first decoder block had no prediction hit: %+v", on)
	}
	if on.CacheMisses >= off.CacheMisses {
		t.Errorf("first decoder block cache misses: %d with step ahead, %d without", on.CacheMisses, off.CacheMisses)
	}
}
