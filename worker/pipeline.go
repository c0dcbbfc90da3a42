package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// Fetcher brings an expert's blob from wherever it lives into dst (len(dst) == Size(k)), verified.
type Fetcher interface {
	Size(k routing.ExpertKey) int64
	Fetch(ctx context.Context, k routing.ExpertKey, dst []byte) error
}

// Tracer follows the pipeline's steps as the engine runs them: a benchmark measures each MoE block's
// latency with it. The pipeline calls it from the goroutine running the engine's Start or Step, in
// order, and holds none of its locks meanwhile (a Tracer may call Stats or ResetStats). It must not
// block: the step waits for it. (engine.Tracer, by contrast, sees the routing decisions themselves.)
type Tracer interface {
	// Routed: MoE block routed, its experts about to be acquired (Hint, at its start).
	Routed(block int, at time.Time)
	// StepEnded: a Start or Step ended (EndStep, before its pins are dropped).
	StepEnded(at time.Time)
}

// PipelineConfig configures a Pipeline.
type PipelineConfig struct {
	Mode    Mode
	Device  Device
	Fetcher Fetcher
	Names   model.ExpertNamer // the tensors of an expert's blob
	// Shapes are the [rows, cols] of an expert's w1, w3 and w2 under the model's config
	// (model.ExpertShapes); a blob whose tensors differ is refused. A zero shape is not checked.
	Shapes [3][2]int
	// DType is the dtype every expert tensor must have (the manifest's: "F32", "BF16", …); a blob
	// of another is refused. "" is not checked.
	DType       string
	NumExperts  []int  // per MoE block
	Tracer      Tracer // nil: none
	CacheBudget int64
	// NoStepAhead: the predicting modes do not prefetch, as a step ends, the experts the first MoE
	// block of the next step will probably use (PredictNextStep); that block's experts are then
	// fetched on demand every step. Only a benchmark's baseline wants this.
	NoStepAhead bool
	// Staging is the number of pinned staging buffers (fetches in flight at once), default 4.
	Staging  int
	Registry prometheus.Registerer // per-block metrics; nil: none
	Logger   *slog.Logger
}

// Pipeline is the worker's engine.Experts: it streams experts from the stores into the device's
// expert cache, ahead of use as the mode allows, and hands the engine weights that live in the cache.
//
//	Predict(b, es) / Hint(b, used) ──▶ cache.get (pin) ──▶ fetch goroutine:
//	    reserve cache bytes (in request order) ─▶ staging buffer ─▶ Fetcher.Fetch into it
//	    ─▶ Device.CopyToDevice on the copy stream ─▶ event ─▶ parse into weights ─▶ ready
//	Acquire(b, e) ──▶ wait for ready (the stall) ──▶ weights      Release(b, e) ──▶ unpin
//
// The engine calls Hint, Predict, Acquire and Release from the goroutine running Start or Step; the
// fetches run on their own goroutines.
type Pipeline struct {
	cfg     PipelineConfig
	mode    policy // what cfg.Mode does
	log     *slog.Logger
	cache   *Cache
	staging chan HostBuffer
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu        sync.Mutex
	wanted    map[routing.ExpertKey]*want // experts a block will use (or was predicted to use)
	predicted map[int][]int               // block → predicted experts, until the block's own Hint
	ahead     map[int][]int               // block → experts predicted for the next step (PredictNextStep)
	used      map[int][]int               // block → experts it used in this step (predicting modes)
	resident  []*cacheEntry               // resident mode: pinned for good

	stats   []blockStats
	metrics *pipelineMetrics
}

// NewPipeline starts a pipeline. In resident mode it fetches every expert before returning.
func NewPipeline(ctx context.Context, cfg PipelineConfig) (*Pipeline, error) {
	if cfg.Staging <= 0 {
		cfg.Staging = 4
	}
	if cfg.Device == nil || cfg.Fetcher == nil || cfg.Names == nil {
		return nil, errors.New("worker: pipeline needs a device, a fetcher and expert names")
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	p := &Pipeline{cfg: cfg, mode: cfg.Mode.policy(), log: cfg.Logger, cache: NewCache(cfg.CacheBudget, nil), wanted: map[routing.ExpertKey]*want{},
		predicted: map[int][]int{}, ahead: map[int][]int{}, used: map[int][]int{}, stats: make([]blockStats, len(cfg.NumExperts))}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	var largest, total int64
	for b, n := range cfg.NumExperts {
		for e := range n {
			s := cfg.Fetcher.Size(routing.ExpertKey{Block: b, Expert: e})
			largest, total = max(largest, s), total+s
		}
	}
	if largest > cfg.CacheBudget {
		return nil, fmt.Errorf("%w: an expert is %d bytes, the budget %d", ErrCacheTooSmall, largest, cfg.CacheBudget)
	}
	if p.mode.resident && total > cfg.CacheBudget {
		return nil, fmt.Errorf("%w: resident mode holds every expert (%d bytes), the budget is %d", ErrCacheTooSmall, total, cfg.CacheBudget)
	}
	p.staging = make(chan HostBuffer, cfg.Staging)
	for range cfg.Staging {
		hb, err := cfg.Device.AllocHost(largest)
		if err != nil {
			return nil, err
		}
		p.staging <- hb
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if cfg.Registry != nil {
		p.metrics = newPipelineMetrics(cfg.Registry, p)
	}
	if p.mode.resident {
		if err := p.loadAll(ctx); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// loadAll fetches every expert and pins it (resident mode).
func (p *Pipeline) loadAll(ctx context.Context) error {
	for b, n := range p.cfg.NumExperts {
		for e := range n {
			ent, created := p.cache.get(routing.ExpertKey{Block: b, Expert: e}, p.cfg.Fetcher.Size(routing.ExpertKey{Block: b, Expert: e}))
			if created {
				p.startFetch(ent)
			}
			p.resident = append(p.resident, ent)
		}
	}
	for _, ent := range p.resident {
		select {
		case <-ent.ready:
			if ent.err != nil {
				return fmt.Errorf("worker: resident load of expert %v: %w", ent.key, ent.err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close stops the fetches and waits for them.
func (p *Pipeline) Close() {
	p.cancel()
	p.wg.Wait()
}

// Cache returns the expert cache.
func (p *Pipeline) Cache() *Cache { return p.cache }

// want is an expert a block will use (or was predicted to use). It pins its entry only while the
// entry is being fetched, so that the fetch is not abandoned; once the expert is ready only an
// Acquire pins it. Ready experts that are wanted but not acquired stay evictable (most recently
// used, so evicted last): pinning them could hold the space that the expert the engine waits for
// needs, and deadlock the pipeline whenever a block uses more experts than the cache holds.
type want struct {
	ent    *cacheEntry
	pinned bool
}

// want marks k as wanted, starting its fetch if it is not in the cache; it reports whether the
// expert was already there (or on its way). Caller holds p.mu.
func (p *Pipeline) want(k routing.ExpertKey) bool {
	if w, ok := p.wanted[k]; ok && !p.cache.gone(w.ent) {
		p.cache.touch(w.ent)
		return true
	} else if ok {
		p.unwant(k)
	}
	ent, created := p.cache.get(k, p.cfg.Fetcher.Size(k))
	w := &want{ent: ent, pinned: true}
	p.wanted[k] = w
	if created {
		p.startFetch(ent)
		return false
	}
	select {
	case <-ent.ready: // in the cache: a want does not pin a ready expert
		p.cache.unpin(ent)
		w.pinned = false
	default:
	}
	return true
}

// fetched drops the in-flight pin of k's want once its fetch has completed.
func (p *Pipeline) fetched(ent *cacheEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w, ok := p.wanted[ent.key]; ok && w.ent == ent && w.pinned {
		w.pinned = false
		p.cache.unpin(ent)
	}
}

// unwant forgets k's want, unpinning (and so abandoning) a fetch still in flight. Caller holds p.mu.
func (p *Pipeline) unwant(k routing.ExpertKey) {
	if w, ok := p.wanted[k]; ok {
		delete(p.wanted, k)
		if w.pinned {
			p.cache.unpin(w.ent)
		}
	}
}

func (p *Pipeline) valid(block int) bool { return block >= 0 && block < len(p.cfg.NumExperts) }

// Predict implements engine.Predictor: block's experts, known one block early.
func (p *Pipeline) Predict(block int, experts []int) {
	if !p.valid(block) || !p.mode.predicted {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.predictLocked(block, experts)
}

func (p *Pipeline) predictLocked(block int, experts []int) {
	p.predicted[block] = slices.Clone(experts)
	for _, e := range experts {
		p.want(routing.ExpertKey{Block: block, Expert: e})
	}
}

// PredictNextStep implements engine.NextStepPredictor: as a step ends, the experts that block (the
// first MoE block of a stack, which no pre-gate routes) will probably use in the next step. The
// pipeline fetches them, and the experts the block used in this step (consecutive tokens often
// route alike), while the step's LM head and the next step's first layers compute; EndStep carries
// these wants into the next step, whose Hint for the block counts the guess's recall and drops the
// wrong ones. Only the predicting modes act on it: ondemand and prefetch-all are the paper's
// baselines, and resident has nothing to fetch.
func (p *Pipeline) PredictNextStep(block int, experts []int) {
	if !p.valid(block) || !p.mode.predicted || p.cfg.NoStepAhead {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	guess := slices.Clone(experts)
	for _, e := range p.used[block] {
		if !slices.Contains(guess, e) {
			guess = append(guess, e)
		}
	}
	p.ahead[block] = guess
	for _, e := range guess {
		p.want(routing.ExpertKey{Block: block, Expert: e})
	}
}

// Hint implements engine.Experts: block routed and will now use experts.
func (p *Pipeline) Hint(block int, used []int) {
	if !p.valid(block) {
		return
	}
	if p.cfg.Tracer != nil {
		p.cfg.Tracer.Routed(block, time.Now())
	}
	if p.mode.resident {
		p.stats[block].hits.Add(int64(len(used)))
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.stats[block]
	if p.mode.predicted {
		p.used[block] = slices.Clone(used)
	}
	if pred, ok := p.predicted[block]; ok {
		delete(p.predicted, block)
		for _, e := range used {
			if slices.Contains(pred, e) {
				st.predHits.Add(1)
			} else {
				st.predMisses.Add(1)
			}
		}
		for _, e := range pred {
			if !slices.Contains(used, e) {
				p.unwant(routing.ExpertKey{Block: block, Expert: e})
			}
		}
	}
	for _, e := range used {
		if p.want(routing.ExpertKey{Block: block, Expert: e}) {
			st.hits.Add(1)
		} else {
			st.misses.Add(1)
		}
	}
	if p.mode.nextBlockAll && p.valid(block+1) {
		all := make([]int, p.cfg.NumExperts[block+1])
		for i := range all {
			all[i] = i
		}
		p.predictLocked(block+1, all)
	}
}

// Acquire implements engine.Experts: it waits for the expert's copy to complete.
func (p *Pipeline) Acquire(ctx context.Context, block, expert int) (*engine.ExpertWeights, error) {
	if !p.valid(block) || expert < 0 || expert >= p.cfg.NumExperts[block] {
		return nil, fmt.Errorf("%w: no expert %d in MoE block %d", engine.ErrBadInput, expert, block)
	}
	k := routing.ExpertKey{Block: block, Expert: expert}
	var ent *cacheEntry
	if p.mode.resident {
		ent = p.resident[p.residentIndex(k)]
	} else {
		p.mu.Lock()
		if _, ok := p.wanted[k]; !ok {
			p.stats[block].misses.Add(1) // used without a Hint: fetched now
		}
		// The want's entry may have been evicted since (it is not pinned once ready), and may be
		// until pinned: want again until the pin holds.
		for {
			p.want(k)
			ent = p.wanted[k].ent
			if p.cache.pinIfLive(ent) {
				break
			}
			p.stats[block].refetches.Add(1)
			p.unwant(k)
		}
		p.mu.Unlock()
	}
	st := &p.stats[block]
	st.acquires.Add(1)
	select {
	case <-ent.ready:
	default:
		t0 := time.Now()
		resume := compute.PauseRaised(ctx) // a raised compute thread is let go while it waits
		select {
		case <-ent.ready:
			resume()
			st.stallNanos.Add(int64(time.Since(t0)))
		case <-ctx.Done():
			resume()
			st.stallNanos.Add(int64(time.Since(t0)))
			if !p.mode.resident {
				p.cache.unpin(ent)
			}
			return nil, ctx.Err()
		}
	}
	err := ent.err
	if err == nil && ent.copying != nil {
		// The copy may still be in flight: the backend's stream waits for it, not the host.
		err = p.cfg.Device.(StreamWaiter).WaitEvent(ent.copying)
	}
	if err != nil {
		if !p.mode.resident {
			p.cache.unpin(ent)
		}
		return nil, fmt.Errorf("%w: worker: expert %v: %w", engine.ErrExpertUnavailable, k, err)
	}
	return ent.weights, nil
}

func (p *Pipeline) residentIndex(k routing.ExpertKey) int {
	i := k.Expert
	for b := range k.Block {
		i += p.cfg.NumExperts[b]
	}
	return i
}

// Release implements engine.Experts.
func (p *Pipeline) Release(block, expert int) {
	if p.mode.resident {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k := routing.ExpertKey{Block: block, Expert: expert}
	if w, ok := p.wanted[k]; ok {
		p.cache.unpin(w.ent) // the Acquire's pin
		p.unwant(k)
	}
}

// EndStep drops every pin a Start or Step left (all of them after a normal step; after a step
// that failed or was cancelled, those of the experts it never reached), and abandons fetches
// nobody waits for, except the next step's predictions (PredictNextStep), which become the
// predictions of the step that follows.
func (p *Pipeline) EndStep() {
	if p.cfg.Tracer != nil {
		p.cfg.Tracer.StepEnded(time.Now())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.wanted {
		if !slices.Contains(p.ahead[k.Block], k.Expert) {
			p.unwant(k)
		}
	}
	clear(p.predicted)
	clear(p.used)
	for b, es := range p.ahead {
		p.predicted[b] = es
	}
	clear(p.ahead)
}

// startFetch runs ent's fetch on its own goroutine: reserve cache space, fetch into a staging
// buffer, copy to the device, parse.
func (p *Pipeline) startFetch(ent *cacheEntry) {
	ctx, cancel := context.WithCancel(p.ctx)
	p.cache.setCancel(ent, cancel)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		w, copying, err := p.fetchInto(ctx, ent)
		if err != nil && ctx.Err() == nil {
			p.log.Warn("expert fetch failed", "expert", ent.key, "err", err)
		}
		p.cache.fill(ent, w, err)
		if !p.mode.resident {
			p.fetched(ent)
		}
		if copying != nil {
			p.landed(ent, copying)
		}
	}()
}

// landed waits for the copy of an expert that was handed over while its copy was in flight (a
// StreamWaiter device), then returns its staging buffer: the copy reads it until its event
// completes. A failed copy leaves the cache; an Acquire that made the compute stream wait for it
// has failed the backend's next Sync, and every Acquire after the failure gets the copy's error
// from WaitEvent (ErrExpertUnavailable).
func (p *Pipeline) landed(ent *cacheEntry, c *inFlight) {
	<-c.ev.Done()
	if err := c.ev.Err(); err != nil {
		p.log.Error("expert copy failed on the device", "expert", ent.key, "device", p.cfg.Device.Name(), "err", err)
		p.cache.discard(ent) // the next use fetches it again
	}
	p.staging <- c.stage
}

// inFlight is a copy to the device that the expert was handed over before, and its staging buffer.
type inFlight struct {
	ev    Event
	stage HostBuffer
}

// fetchInto fetches ent's blob into its device buffer and parses it. On a StreamWaiter device it
// returns as soon as the copy is enqueued, with the copy (ent.copying is set); the caller returns
// the staging buffer once it completes (landed).
func (p *Pipeline) fetchInto(ctx context.Context, ent *cacheEntry) (*engine.ExpertWeights, *inFlight, error) {
	if err := p.cache.reserve(ctx, ent, p.cfg.Device.Alloc); err != nil {
		return nil, nil, err
	}
	var stage HostBuffer
	select {
	case stage = <-p.staging:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	n := ent.size
	if ha, ok := p.cfg.Device.(HostAddressable); ok && ha.HostAddressable() {
		// Straight into device memory; the staging buffer only bounds the fetches in flight.
		err := p.cfg.Fetcher.Fetch(ctx, ent.key, ent.buf.HostView()[:n])
		p.staging <- stage
		if err != nil {
			return nil, nil, err
		}
		p.countFetch(ent)
		w, err := p.parse(ent.key, ent.buf.HostView()[:n], nil)
		return w, nil, err
	}
	if err := p.cfg.Fetcher.Fetch(ctx, ent.key, stage.Bytes()[:n]); err != nil {
		p.staging <- stage
		return nil, nil, err
	}
	ev := p.cfg.Device.CopyToDevice(ent.buf, stage, n)
	// The header is read on the host, from the staging buffer, while the copy reads it too; the
	// weights are views of the device buffer.
	w, err := p.parse(ent.key, stage.Bytes()[:n], ent.buf)
	if _, ok := p.cfg.Device.(StreamWaiter); ok && err == nil {
		// Handed over now: Acquire has the compute stream wait for the copy.
		ent.copying = ev
		p.countFetch(ent)
		return w, &inFlight{ev: ev, stage: stage}, nil
	}
	// The copy reads the staging buffer, and writes the device buffer (which a failed parse
	// frees), until its event completes: wait for it even if ctx ends.
	<-ev.Done()
	if err == nil {
		err = ev.Err()
	}
	p.staging <- stage
	if err != nil {
		return nil, nil, err
	}
	p.countFetch(ent)
	return w, nil, nil
}

// countFetch counts a fetch of ent's bytes in its block's stats.
func (p *Pipeline) countFetch(ent *cacheEntry) {
	st := &p.stats[ent.key.Block]
	st.fetchedBytes.Add(ent.size)
	st.fetches.Add(1)
}

// parse reads an expert blob's header from b (the blob's bytes as the host sees them) and returns
// the engine's weights: views of b itself when dev is nil (a host-addressable device: the CPU
// backend computes on b), else tensors of dev, which holds the same bytes in device memory.
func (p *Pipeline) parse(k routing.ExpertKey, b []byte, dev DeviceBuffer) (*engine.ExpertWeights, error) {
	h, data, err := blob.Parse(b)
	if err != nil {
		return nil, err
	}
	if h.Kind != blob.KindExpert || h.Block != k.Block || h.Expert != k.Expert {
		return nil, fmt.Errorf("worker: blob for expert %v holds %s block %d expert %d", k, h.Kind, h.Block, h.Expert)
	}
	w1, w3, w2 := p.cfg.Names(k.Block, k.Expert)
	weight := func(name string, want [2]int) (engine.Weight, error) {
		raw, info, err := h.Tensor(data, name)
		if err != nil {
			return engine.Weight{}, err
		}
		if len(info.Shape) != 2 {
			return engine.Weight{}, fmt.Errorf("worker: expert %v tensor %s has shape %v", k, name, info.Shape)
		}
		if p.cfg.DType != "" && info.DType != p.cfg.DType {
			return engine.Weight{}, fmt.Errorf("worker: expert %v tensor %s is %s, the model's manifest says %s", k, name, info.DType, p.cfg.DType)
		}
		if want != ([2]int{}) && (info.Shape[0] != want[0] || info.Shape[1] != want[1]) {
			// A blob can be whole and match its digest and still not be this model's (a manifest
			// written by someone else): computing with it would read past its end.
			return engine.Weight{}, fmt.Errorf("worker: expert %v tensor %s has shape %v, the model's config wants %v", k, name, info.Shape, want)
		}
		if dev == nil {
			return engine.WeightFromBytes(model.DType(info.DType), info.Shape[0], info.Shape[1], raw)
		}
		var dt compute.DType
		switch model.DType(info.DType) {
		case model.F32:
			dt = compute.F32
		case model.BF16:
			dt = compute.BF16
		default:
			return engine.Weight{}, fmt.Errorf("worker: expert %v tensor %s is %s: device %s computes on F32 and BF16 only", k, name, info.DType, p.cfg.Device.Name())
		}
		t, err := dev.Tensor(int64(len(b)-len(data))+info.Offset, dt, info.Shape[0]*info.Shape[1])
		if err != nil {
			return engine.Weight{}, fmt.Errorf("worker: expert %v tensor %s: %w", k, name, err)
		}
		return engine.Weight{Rows: info.Shape[0], Cols: info.Shape[1], T: t}, nil
	}
	var ew engine.ExpertWeights
	if ew.W1, err = weight(w1, p.cfg.Shapes[0]); err != nil {
		return nil, err
	}
	if ew.W2, err = weight(w2, p.cfg.Shapes[2]); err != nil {
		return nil, err
	}
	if w3 != "" {
		if ew.W3, err = weight(w3, p.cfg.Shapes[1]); err != nil {
			return nil, err
		}
	}
	return &ew, nil
}

// pipelinedModel wraps an engine.Model so that each Start and Step ends with EndStep.
type pipelinedModel struct {
	engine.Model
	p *Pipeline
}

// Start implements engine.Model.
func (m pipelinedModel) Start(ctx context.Context, prompts [][]int) ([]*engine.Sequence, error) {
	defer m.p.EndStep()
	return m.Model.Start(ctx, prompts)
}

// Step implements engine.Model.
func (m pipelinedModel) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	defer m.p.EndStep()
	return m.Model.Step(ctx, seqs, all)
}

// WrapModel returns m with p's step bookkeeping (EndStep after every Start and Step).
func WrapModel(m engine.Model, p *Pipeline) engine.Model { return pipelinedModel{Model: m, p: p} }
