package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
	"github.com/pregate/pregate/worker"
	"github.com/pregate/pregate/worker/serve"
)

// Link regimes: a named link speed (bytes/s) scaled by this CPU's speed relative to an A100, or the
// paper's regime, which sets f ≈ 0.5c directly.
var regimes = map[string]float64{
	"pcie4":   25e9,      // PCIe 4.0 x16, effective (the paper's A100 host link)
	"rdma100": 100e9 / 8, // 100 Gb/s RDMA
	"tcp25":   25e9 / 8,  // 25 Gb/s Ethernet, TCP
	"paper":   0,         // computed: f = 0.5c
}

// A100 figures used to scale a named link to this CPU (a decode step is bound by memory bandwidth).
const (
	a100Bandwidth = 1.555e12 // bytes/s, HBM2 (A100 40 GB)
	paperRatio    = 0.5      // f/c in the paper's Switch-Base on A100 + PCIe 4 regime
)

// ModesOptions configures a run.
type ModesOptions struct {
	ModelDir string // a checkpoint; or Preset
	Preset   string // synth preset (switch-base-8, …)
	// Overrides for the preset (0: keep), to scale a preset down to this machine.
	Layers, DModel, DFF, Experts int
	DType                        model.DType
	Modes                        []worker.Mode
	Stores                       int
	Tokens                       int // new tokens per sequence
	PromptTokens                 int
	Batch                        int // sequences decoded together
	LinkGbps                     float64
	Regime                       string
	Threads                      int
	// ComputePriority is given to each worker's compute threads (worker.Config.ComputePriority).
	// Above normal it models a GPU worker on this CPU: the device's compute is not slowed by the
	// fetch path's work on the host (nor by the stores', which share these cores here). Where it
	// cannot be had, the run says so in its notes and computes at normal priority.
	ComputePriority compute.Priority
	// Device names the workers' device ("cpu" when empty); OpenAccelerator, when set, opens the
	// GPU each mode's worker runs on (worker.Config's fields of those names).
	Device          string
	OpenAccelerator func(cacheBytes int64) (worker.Accelerator, error)
	// Rounds is how many times the modes run, interleaved (resident, ondemand, …, then again);
	// the result reports medians and spreads over rounds. Default 3.
	Rounds int
	// StepAheadBaseline also runs pregated without the step-ahead prefetch of the first MoE
	// block's experts (row "pregated-no-ahead", worker.Config.NoStepAhead), in the same rounds:
	// the first-block stall before and after (issue 16).
	StepAheadBaseline bool
	Dir               string    // work directory (models, cluster data)
	Progress          io.Writer // progress lines; nil: none
	Logger            *slog.Logger
}

// ModesResult is a run's outcome; its JSON form is documented in docs/BENCHMARKS.md.
type ModesResult struct {
	Model                     string  `json:"model"`
	Arch                      string  `json:"arch"`
	ComputeSecondsPerBlock    float64 `json:"compute_seconds_per_block"`
	FetchSecondsPerBlock      float64 `json:"fetch_seconds_per_block"`
	IdealOndemandOverPregated float64 `json:"ideal_ondemand_over_pregated"`
	LinkBytesPerSecond        float64 `json:"link_bytes_per_second"` // 0: not paced (loopback as is)
	Regime                    string  `json:"regime,omitempty"`
	LinkScale                 float64 `json:"link_scale,omitempty"` // CPU vs A100 factor applied to a named link
	ActiveExpertBytesPerBlock float64 `json:"active_expert_bytes_per_block"`
	ExpertBytes               int64   `json:"expert_bytes"` // one expert
	RandomPreGates            bool    `json:"random_pre_gates"`
	Batch                     int     `json:"batch"`
	Tokens                    int     `json:"tokens"`
	PromptTokens              int     `json:"prompt_tokens"`
	// ComputePriority is the priority the workers' compute threads ran at (ModesOptions).
	ComputePriority string `json:"compute_priority"`
	// Modes are each mode's median round (by block p50).
	Modes []ModeResult `json:"modes"`
	// Ratios are the medians over rounds of each round's ratios; RatioSpread their spread and how
	// many rounds met each target; RoundRatios every round's.
	Ratios      Ratios      `json:"ratios"`
	RatioSpread RatioSpread `json:"ratio_spread"`
	Rounds      int         `json:"rounds"`
	RoundRatios []Ratios    `json:"round_ratios"`
	Notes       []string    `json:"notes,omitempty"`
}

// modePregatedNoAhead is the row of pregated run without the step-ahead prefetch of the first MoE
// block's experts (ModesOptions.StepAheadBaseline). It is a bench row, not a worker mode.
const modePregatedNoAhead worker.Mode = "pregated-no-ahead"

// workerMode is the worker's mode for a row, and whether the row turns the step-ahead prefetch off.
func workerMode(m worker.Mode) (worker.Mode, bool) {
	if m == modePregatedNoAhead {
		return worker.ModePregated, true
	}
	return m, false
}

// Spread is a ratio over rounds: its median, range, the rounds that had it, and how many of them
// met the ratio's target (for the ratios that have one).
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Rounds int     `json:"rounds"`
	Met    int     `json:"met_target"`
}

// RatioSpread is Ratios' spread, field by field (nil when the ratio was not measured).
type RatioSpread struct {
	PregatedOverResident      *Spread `json:"pregated_over_resident,omitempty"`
	OndemandOverPregated      *Spread `json:"ondemand_over_pregated,omitempty"`
	OndemandOverIdealBound    *Spread `json:"ondemand_over_pregated_vs_ideal,omitempty"`
	PrefetchAllOverPregated   *Spread `json:"prefetch_all_over_pregated,omitempty"`
	SpeculativeOverPregated   *Spread `json:"speculative_over_pregated,omitempty"`
	PregatedPeakOverResident  *Spread `json:"pregated_peak_over_resident,omitempty"`
	NoAheadOverResident       *Spread `json:"pregated_no_ahead_over_resident,omitempty"`
	PregatedOverNoAheadTokens *Spread `json:"pregated_over_no_ahead_tokens_per_second,omitempty"`
	FirstBlockStallPregated   *Spread `json:"first_block_stall_seconds_pregated,omitempty"`
	FirstBlockStallNoAhead    *Spread `json:"first_block_stall_seconds_no_ahead,omitempty"`
}

// ModeResult is one mode's measurements (decode steps only).
type ModeResult struct {
	Mode                  string   `json:"mode"`
	BlockLatencyP50       float64  `json:"block_latency_seconds_p50"`
	BlockLatencyP90       float64  `json:"block_latency_seconds_p90"`
	DecodeTokensPerSecond float64  `json:"decode_tokens_per_second"`
	StallFraction         float64  `json:"stall_fraction"`
	BytesFetched          int64    `json:"bytes_fetched"`
	PeakExpertBytes       int64    `json:"peak_expert_bytes"`
	CacheBudgetBytes      int64    `json:"cache_budget_bytes"`
	Recall                *float64 `json:"recall"` // prediction recall (pregated, speculative); null otherwise
	StallSecondsPerBlock  float64  `json:"stall_seconds_per_block"`
	Refetches             int64    `json:"refetches"` // experts evicted between want and use
	// Blocks are the MoE blocks the decode steps ran, in forward order.
	Blocks []BlockResult `json:"blocks,omitempty"`
}

// BlockResult is one MoE block's share of a mode's decode steps: how long the compute waited for
// its experts, and how well they were predicted.
type BlockResult struct {
	Block int `json:"block"`
	// PreGated: the block is routed by the previous block's pre-gate (in a pre-gated checkpoint);
	// the first MoE block of a stack never is.
	PreGated            bool    `json:"pre_gated"`
	StallSecondsPerStep float64 `json:"stall_seconds_per_step"`
	// LatencySecondsP50 is the block's median latency (its routing to the next block's, or to the
	// step's end for the last, which so includes the LM head).
	LatencySecondsP50 float64 `json:"latency_seconds_p50"`
	CacheMisses       int64   `json:"cache_misses"`
	// Recall is the fraction of the experts the block used that were predicted (null when nothing
	// predicted the block).
	Recall *float64 `json:"recall"`
}

// Ratios are the paper's headline comparisons (0 when a mode was not run).
type Ratios struct {
	PregatedOverResident     float64 `json:"pregated_over_resident"`
	OndemandOverPregated     float64 `json:"ondemand_over_pregated"`
	OndemandOverIdealBound   float64 `json:"ondemand_over_pregated_vs_ideal"` // (ondemand/pregated) / ideal bound
	PrefetchAllOverPregated  float64 `json:"prefetch_all_over_pregated"`
	SpeculativeOverPregated  float64 `json:"speculative_over_pregated"`
	PregatedPeakOverResident float64 `json:"pregated_peak_over_resident"`
	NoAheadOverResident      float64 `json:"pregated_no_ahead_over_resident,omitempty"` // with StepAheadBaseline
	// PregatedOverNoAheadTokens is pregated's decode tokens/s over pregated-no-ahead's (> 1: the
	// step-ahead prefetch pays for itself over whole steps, LM head included).
	PregatedOverNoAheadTokens float64 `json:"pregated_over_no_ahead_tokens_per_second,omitempty"`
	// FirstBlockStall… are the stall per decode step of the first MoE block of the decoder (the
	// one no pre-gate routes) in pregated and pregated-no-ahead: seconds, not ratios, kept here so
	// that they get medians and spreads over rounds as the ratios do.
	FirstBlockStallPregated float64 `json:"first_block_stall_seconds_pregated,omitempty"`
	FirstBlockStallNoAhead  float64 `json:"first_block_stall_seconds_no_ahead,omitempty"`
}

func (o *ModesOptions) defaults() error {
	if o.ModelDir == "" && o.Preset == "" {
		return errors.New("bench: give a model directory or a preset")
	}
	if len(o.Modes) == 0 {
		o.Modes = slices.Clone(worker.Modes)
	}
	o.Stores = max(o.Stores, 1)
	o.Tokens = cmp.Or(o.Tokens, 32)
	o.PromptTokens = cmp.Or(o.PromptTokens, 16)
	o.Batch = cmp.Or(o.Batch, 1)
	o.Rounds = cmp.Or(o.Rounds, 3)
	if o.Rounds < 1 {
		return fmt.Errorf("bench: %d rounds", o.Rounds)
	}
	if o.LinkGbps == 0 && o.Regime == "" {
		o.Regime = "paper"
	}
	if _, ok := regimes[o.Regime]; o.Regime != "" && !ok {
		return fmt.Errorf("bench: unknown regime %q (paper, pcie4, rdma100, tcp25)", o.Regime)
	}
	if o.DType == "" {
		o.DType = model.F32
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// Run runs the benchmark.
func RunModes(ctx context.Context, o ModesOptions) (*ModesResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	res := &ModesResult{Batch: o.Batch, Tokens: o.Tokens, PromptTokens: o.PromptTokens}
	hostThreads := o.Threads // the CPU computes; on a GPU one host thread drives it
	if o.Device != "" && o.Device != "cpu" {
		hostThreads = 1
	}
	if err := compute.CheckPriority(o.ComputePriority, hostThreads); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("compute priority %s not available, normal used: the fetch path's CPU competes with compute (%v)", o.ComputePriority, err))
		o.ComputePriority = compute.PriorityNormal
	}
	res.ComputePriority = o.ComputePriority.String()
	base, pregated, err := prepareModels(o, res)
	if err != nil {
		return nil, err
	}

	// A fresh cluster each run (the stores keep blobs in RAM); synthesised models are reused.
	if err := os.RemoveAll(filepath.Join(o.Dir, "cluster")); err != nil {
		return nil, err
	}
	lc, err := cluster.Start(cluster.Config{Dir: filepath.Join(o.Dir, "cluster"), Stores: o.Stores, Replicas: 1,
		StoreCapacity: 64 << 30, Logger: o.Logger}) // production timers: test timers gossip and reconcile every few ms, taking CPU from the run
	if err != nil {
		return nil, err
	}
	defer lc.Close()
	if err := lc.WaitStores(ctx, o.Stores); err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, dir := range []string{base, pregated} {
		if dir == "" {
			continue
		}
		name := filepath.Base(dir)
		fmt.Fprintf(o.Progress, "importing %s\n", name)
		if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: name}); err != nil {
			return nil, err
		}
		names[dir] = name
	}
	modelFor := func(m worker.Mode) (string, bool) {
		m, _ = workerMode(m)
		switch {
		case m == worker.ModePregated && pregated != "":
			return names[pregated], true
		case m == worker.ModePregated:
			return "", false
		case base != "":
			return names[base], true
		}
		return "", false
	}

	ckpt, err := model.OpenCheckpoint(cmp.Or(base, pregated))
	if err != nil {
		return nil, err
	}
	res.Model, res.Arch = filepath.Base(cmp.Or(base, pregated)), ckpt.Config().ModelType
	topK, numExperts := routingShape(ckpt.Config())
	ckpt.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	vocab := vocabOf(cmp.Or(base, pregated))
	prompts := make([][]int, o.Batch)
	for i := range prompts {
		for range o.PromptTokens {
			prompts[i] = append(prompts[i], 2+rng.IntN(vocab-2))
		}
	}

	// Resident first: c, and how many experts a decode step activates per block.
	run := func(m worker.Mode, budget int64, link float64) (ModeResult, *runStats, error) {
		name, ok := modelFor(m)
		if !ok {
			return ModeResult{}, nil, fmt.Errorf("mode %s does not fit %s", m, res.Model)
		}
		cache, pace := humanize.IBytes(uint64(budget)), "not paced"
		if budget >= 1<<62 {
			cache = "unbounded"
		}
		if link > 0 {
			pace = humanize.SIWithDigits(link, 3, "B") + "/s"
		}
		fmt.Fprintf(o.Progress, "running %s (expert cache %s, link %s)\n", m, cache, pace)
		return runMode(ctx, lc, o, name, m, budget, link, prompts)
	}
	resident, rs, err := run(worker.ModeResident, 1<<62, 0)
	if err != nil {
		return nil, err
	}
	res.ExpertBytes = rs.expertBytes
	c := resident.BlockLatencyP50
	res.ComputeSecondsPerBlock = c
	active := rs.activePerBlock
	res.ActiveExpertBytesPerBlock = active * float64(rs.expertBytes)
	activeSlots := int64(math.Ceil(math.Min(float64(numExperts), math.Max(active, float64(min(o.Batch*topK, numExperts))))))

	var unpacedOnDemand *ModeResult
	switch {
	case o.LinkGbps > 0:
		res.LinkBytesPerSecond = o.LinkGbps * 1e9 / 8
	case o.Regime == "paper":
		// The fetch path has costs of its own (a request round trip, checks, parse, wake-ups) that
		// pacing adds to: measure the unpaced f0 first, then pace only what is missing to 0.5 c.
		res.Regime = "paper"
		es := rs.expertBytes
		od, _, err := run(worker.ModeOnDemand, activeSlots*es, 0)
		if err != nil {
			return nil, err
		}
		f0, target := od.StallSecondsPerBlock, paperRatio*c
		if f0 >= target {
			od.CacheBudgetBytes = activeSlots * es
			unpacedOnDemand = &od // the ondemand run of the table: the link stays unpaced
			res.Notes = append(res.Notes, fmt.Sprintf("regime paper: the unpaced loopback already gives f = %.3g ms ≥ 0.5 × c = %.3g ms: not paced (shrink the experts, e.g. --d-ff, to get nearer 0.5)", f0*1e3, target*1e3))
		} else {
			res.LinkBytesPerSecond = res.ActiveExpertBytesPerBlock / (target - f0)
			res.Notes = append(res.Notes, fmt.Sprintf("regime paper: unpaced f = %.3g ms; link paced at %.3g B/s to add the %.3g ms missing to 0.5 × c", f0*1e3, res.LinkBytesPerSecond, (target-f0)*1e3))
		}
	default:
		res.Regime = o.Regime
		a100 := (rs.denseBytesPerBlock + res.ActiveExpertBytesPerBlock) / a100Bandwidth
		res.LinkScale = a100 / c
		res.LinkBytesPerSecond = regimes[o.Regime] * res.LinkScale
		res.Notes = append(res.Notes, fmt.Sprintf("regime %s: %.3g B/s × %.3g (an A100 would take %.3g s per block, this CPU %.3g s) = %.3g B/s",
			o.Regime, regimes[o.Regime], res.LinkScale, a100, c, res.LinkBytesPerSecond))
	}
	es := rs.expertBytes
	budgets := map[worker.Mode]int64{
		worker.ModeResident:    1 << 62,
		worker.ModeOnDemand:    activeSlots * es,
		worker.ModePregated:    2 * activeSlots * es,
		worker.ModeSpeculative: 3 * activeSlots * es,
		worker.ModePrefetchAll: (int64(numExperts) + activeSlots) * es,
		modePregatedNoAhead:    2 * activeSlots * es,
	}
	resident.CacheBudgetBytes = rs.totalExpertBytes
	// The modes run interleaved, in rounds (resident, ondemand, …, then again): the machine's drift
	// over a run lands in every mode alike instead of in the ratios, and the rounds' spread shows
	// how far one run can be trusted.
	modes := o.Modes
	if o.StepAheadBaseline && slices.Contains(modes, worker.ModePregated) {
		modes = append(slices.Clone(modes), modePregatedNoAhead)
	}
	rounds := make([]map[worker.Mode]ModeResult, o.Rounds)
	for r := range rounds {
		byMode := map[worker.Mode]ModeResult{worker.ModeResident: resident}
		if r > 0 {
			fmt.Fprintf(o.Progress, "round %d of %d\n", r+1, o.Rounds)
			mr, _, err := run(worker.ModeResident, 1<<62, 0)
			if err != nil {
				return nil, err
			}
			mr.CacheBudgetBytes = rs.totalExpertBytes
			byMode[worker.ModeResident] = mr
		}
		for _, m := range modes {
			if m == worker.ModeResident {
				continue
			}
			if _, ok := modelFor(m); !ok {
				if r == 0 {
					res.Notes = append(res.Notes, fmt.Sprintf("mode %s skipped: the checkpoint does not fit it", m))
				}
				continue
			}
			if m == worker.ModeOnDemand && unpacedOnDemand != nil && r == 0 {
				byMode[m] = *unpacedOnDemand
				continue
			}
			mr, _, err := run(m, budgets[m], res.LinkBytesPerSecond)
			if err != nil {
				return nil, err
			}
			byMode[m] = mr
		}
		rounds[r] = byMode
	}
	aggregateRounds(res, rounds, modes)
	return res, nil
}

// roundRatios are one round's ratios, with that round's c and f.
func roundRatios(byMode map[worker.Mode]ModeResult, res *ModesResult) Ratios {
	ratio := func(a, b worker.Mode, get func(ModeResult) float64) float64 {
		x, okx := byMode[a]
		y, oky := byMode[b]
		if !okx || !oky || get(y) == 0 {
			return 0
		}
		return get(x) / get(y)
	}
	p50 := func(m ModeResult) float64 { return m.BlockLatencyP50 }
	rt := Ratios{
		PregatedOverResident:      ratio(worker.ModePregated, worker.ModeResident, p50),
		OndemandOverPregated:      ratio(worker.ModeOnDemand, worker.ModePregated, p50),
		PrefetchAllOverPregated:   ratio(worker.ModePrefetchAll, worker.ModePregated, p50),
		SpeculativeOverPregated:   ratio(worker.ModeSpeculative, worker.ModePregated, p50),
		PregatedPeakOverResident:  ratio(worker.ModePregated, worker.ModeResident, func(m ModeResult) float64 { return float64(m.PeakExpertBytes) }),
		NoAheadOverResident:       ratio(modePregatedNoAhead, worker.ModeResident, p50),
		PregatedOverNoAheadTokens: ratio(worker.ModePregated, modePregatedNoAhead, func(m ModeResult) float64 { return m.DecodeTokensPerSecond }),
	}
	rt.FirstBlockStallPregated = firstBlockStall(byMode[worker.ModePregated])
	rt.FirstBlockStallNoAhead = firstBlockStall(byMode[modePregatedNoAhead])
	c := byMode[worker.ModeResident].BlockLatencyP50
	f := res.ActiveExpertBytesPerBlock / res.LinkBytesPerSecond
	if od, ok := byMode[worker.ModeOnDemand]; ok {
		f = od.StallSecondsPerBlock
	}
	if ideal := (c + f) / math.Max(c, f); rt.OndemandOverPregated > 0 && ideal > 0 {
		rt.OndemandOverIdealBound = rt.OndemandOverPregated / ideal
	}
	return rt
}

// firstBlockStall is the stall per step of the first block of m's decode steps that no pre-gate
// routes (0 when m has none, or it never stalled).
func firstBlockStall(m ModeResult) float64 {
	for _, b := range m.Blocks {
		if !b.PreGated {
			return b.StallSecondsPerStep
		}
	}
	return 0
}

// Targets of the headline ratios (the goals; the paper reports 1.19–1.27 and 1.56–1.89).
const (
	targetPregatedOverResident = 1.10 // at most
	targetOndemandOverIdeal    = 0.95 // at least
)

// aggregateRounds fills res from the rounds: each mode's row is its median round (by block p50, the
// lower one of an even count, so the row's numbers belong together), c and f are the medians over rounds, each ratio is the
// median of the rounds' ratios, with its spread and how many rounds met the target.
func aggregateRounds(res *ModesResult, rounds []map[worker.Mode]ModeResult, modes []worker.Mode) {
	median := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		if n := len(s); n%2 == 0 {
			return (s[n/2-1] + s[n/2]) / 2
		}
		return s[len(s)/2]
	}
	for _, m := range append(slices.Clone(worker.Modes), modePregatedNoAhead) {
		if m != worker.ModeResident && !slices.Contains(modes, m) {
			continue
		}
		var rows []ModeResult
		for _, by := range rounds {
			if mr, ok := by[m]; ok {
				rows = append(rows, mr)
			}
		}
		if len(rows) == 0 {
			continue
		}
		slices.SortStableFunc(rows, func(a, b ModeResult) int { return cmp.Compare(a.BlockLatencyP50, b.BlockLatencyP50) })
		res.Modes = append(res.Modes, rows[(len(rows)-1)/2])
	}
	var cs, fs []float64
	for _, by := range rounds {
		cs = append(cs, by[worker.ModeResident].BlockLatencyP50)
		if od, ok := by[worker.ModeOnDemand]; ok {
			fs = append(fs, od.StallSecondsPerBlock)
		}
		res.RoundRatios = append(res.RoundRatios, roundRatios(by, res))
	}
	res.Rounds = len(rounds)
	res.ComputeSecondsPerBlock = median(cs)
	if len(fs) > 0 {
		res.FetchSecondsPerBlock = median(fs)
	} else {
		res.FetchSecondsPerBlock = res.ActiveExpertBytesPerBlock / res.LinkBytesPerSecond
	}
	c, f := res.ComputeSecondsPerBlock, res.FetchSecondsPerBlock
	res.IdealOndemandOverPregated = (c + f) / math.Max(c, f)

	// A ratio of 0 was not measured in that round; a stall of 0 was, when its rows ran (ran).
	field := func(get func(Ratios) float64, ran func(Ratios) bool) (Spread, bool) {
		var xs []float64
		for _, rt := range res.RoundRatios {
			if v := get(rt); v > 0 || (ran != nil && ran(rt)) {
				xs = append(xs, v)
			}
		}
		if len(xs) == 0 {
			return Spread{}, false
		}
		return Spread{Median: median(xs), Min: slices.Min(xs), Max: slices.Max(xs), Rounds: len(xs)}, true
	}
	set := func(dst *float64, spread **Spread, get func(Ratios) float64, met func(float64) bool) {
		s, ok := field(get, nil)
		if !ok {
			return
		}
		*dst = s.Median
		if met != nil {
			for _, rt := range res.RoundRatios {
				if v := get(rt); v > 0 && met(v) {
					s.Met++
				}
			}
		}
		*spread = &s
	}
	sp := &res.RatioSpread
	set(&res.Ratios.PregatedOverResident, &sp.PregatedOverResident, func(r Ratios) float64 { return r.PregatedOverResident },
		func(v float64) bool { return v <= targetPregatedOverResident })
	set(&res.Ratios.OndemandOverPregated, &sp.OndemandOverPregated, func(r Ratios) float64 { return r.OndemandOverPregated }, nil)
	set(&res.Ratios.OndemandOverIdealBound, &sp.OndemandOverIdealBound, func(r Ratios) float64 { return r.OndemandOverIdealBound },
		func(v float64) bool { return v >= targetOndemandOverIdeal })
	set(&res.Ratios.PrefetchAllOverPregated, &sp.PrefetchAllOverPregated, func(r Ratios) float64 { return r.PrefetchAllOverPregated }, nil)
	set(&res.Ratios.SpeculativeOverPregated, &sp.SpeculativeOverPregated, func(r Ratios) float64 { return r.SpeculativeOverPregated }, nil)
	set(&res.Ratios.PregatedPeakOverResident, &sp.PregatedPeakOverResident, func(r Ratios) float64 { return r.PregatedPeakOverResident }, nil)
	set(&res.Ratios.NoAheadOverResident, &sp.NoAheadOverResident, func(r Ratios) float64 { return r.NoAheadOverResident },
		func(v float64) bool { return v <= targetPregatedOverResident })
	set(&res.Ratios.PregatedOverNoAheadTokens, &sp.PregatedOverNoAheadTokens, func(r Ratios) float64 { return r.PregatedOverNoAheadTokens }, nil)
	baselineRan := func(r Ratios) bool { return r.NoAheadOverResident > 0 }
	for _, st := range []struct {
		dst    *float64
		spread **Spread
		get    func(Ratios) float64
	}{
		{&res.Ratios.FirstBlockStallPregated, &sp.FirstBlockStallPregated, func(r Ratios) float64 { return r.FirstBlockStallPregated }},
		{&res.Ratios.FirstBlockStallNoAhead, &sp.FirstBlockStallNoAhead, func(r Ratios) float64 { return r.FirstBlockStallNoAhead }},
	} {
		if s, ok := field(st.get, baselineRan); ok {
			*st.dst, *st.spread = s.Median, &s
		}
	}
}

// prepareModels returns the checkpoint for the modes without pre-gates and the one for pregated
// (either may be ""), synthesising a preset (and its pre-gated twin) when no directory is given.
func prepareModels(o ModesOptions, res *ModesResult) (base, pregated string, err error) {
	if o.ModelDir != "" {
		ckpt, err := model.OpenCheckpoint(o.ModelDir)
		if err != nil {
			return "", "", err
		}
		defer ckpt.Close()
		if ckpt.HasPreGates() {
			return "", o.ModelDir, nil
		}
		return o.ModelDir, "", nil
	}
	opts := synth.Options{Preset: o.Preset, DType: o.DType, Seed: 1, Layers: o.Layers, DModel: o.DModel, DFF: o.DFF, Experts: o.Experts}
	cfg, err := synth.Config(opts)
	if err != nil {
		return "", "", err
	}
	tag := fmt.Sprintf("%s-l%d-d%d-f%d-e%d-%s", o.Preset, o.Layers, o.DModel, o.DFF, o.Experts, o.DType)
	base = filepath.Join(o.Dir, "models", tag)
	if err := synthOnce(opts, base, o.Progress); err != nil {
		return "", "", err
	}
	if cfg.Switch != nil {
		pregated = base + "-pregated"
		opts.PreGates = true
		if err := synthOnce(opts, pregated, o.Progress); err != nil {
			return "", "", err
		}
		res.RandomPreGates = true
		res.Notes = append(res.Notes, "pregated runs a copy of the model with random pre-gate matrices: timing is faithful, its tokens differ from the other modes'")
	} else {
		res.Notes = append(res.Notes, "pregated needs pre-gate matrices, which the engine supports on Switch checkpoints only: not run")
	}
	return base, pregated, nil
}

func synthOnce(opts synth.Options, dir string, progress io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return nil
	}
	fmt.Fprintf(progress, "synthesising %s\n", dir)
	opts.Out = dir
	return synth.Write(opts, nil)
}

func routingShape(cfg *model.Config) (topK, experts int) {
	if cfg.Mixtral != nil {
		return cfg.Mixtral.NumExpertsPerTok, cfg.Mixtral.NumLocalExperts
	}
	return 1, cfg.Switch.NumExperts
}

func vocabOf(dir string) int {
	cfg, err := model.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return 2
	}
	if cfg.Mixtral != nil {
		return cfg.Mixtral.VocabSize
	}
	return cfg.Switch.VocabSize
}

// runStats is what the resident run tells the others.
type runStats struct {
	expertBytes, totalExpertBytes int64
	activePerBlock                float64 // experts a decode step uses per MoE block, on average
	denseBytesPerBlock            float64
}

// runMode serves model on a fresh worker in mode m and decodes the prompts, measuring the decode
// steps only.
func runMode(ctx context.Context, lc *cluster.Local, o ModesOptions, name string, m worker.Mode, budget int64, link float64, prompts [][]int) (ModeResult, *runStats, error) {
	wc := worker.DefaultConfig()
	wm, noAhead := workerMode(m)
	wc.Name, wc.EtcdEndpoints, wc.Model, wc.Mode, wc.NoStepAhead = "bench-"+string(m), lc.EtcdEndpoints(), name, wm, noAhead
	wc.ExpertCache, wc.HTTPAddr, wc.DataDir, wc.Threads = budget, "127.0.0.1:0", filepath.Join(o.Dir, "worker"), o.Threads
	wc.ComputePriority = o.ComputePriority
	if o.Device != "" {
		wc.Device, wc.OpenAccelerator = o.Device, o.OpenAccelerator
	}
	rec := newRecorder()
	wc.Tracer, wc.Logger = rec, o.Logger
	if link > 0 {
		wc.Link = func(f worker.Fetcher) worker.Fetcher { return shapeLink(f, link) }
	}
	wc.MaxRunning = max(64, len(prompts))
	w, err := worker.New(wc)
	if err != nil {
		return ModeResult{}, nil, err
	}
	defer w.Close()
	if err := w.WaitReady(ctx); err != nil {
		return ModeResult{}, nil, err
	}
	pipe, srv := w.Pipeline(), w.Server()
	// Measure decode steps only: from the end of the prefill (the Start and the first Step; the
	// sequences are admitted together) to the last token, with the counters reset there.
	rec.startAfter(2, pipe.ResetStats)
	var wg sync.WaitGroup
	errs := make([]error, len(prompts))
	for i, p := range prompts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = srv.Generate(ctx, serve.Request{Prompt: p, MaxTokens: o.Tokens, IgnoreEOS: true}, func(int) {})
		}()
	}
	wg.Wait()
	elapsed := time.Since(rec.stop())
	if err := errors.Join(errs...); err != nil {
		return ModeResult{}, nil, err
	}
	var lat []float64
	perBlock := rec.blockLatencies()
	for _, l := range perBlock {
		for _, d := range l {
			lat = append(lat, d.Seconds())
		}
	}
	if len(lat) == 0 {
		return ModeResult{}, nil, fmt.Errorf("bench: %s: no decode step measured (need --tokens ≥ 2)", m)
	}
	slices.Sort(lat)
	mr := ModeResult{Mode: string(m), BlockLatencyP50: quantile(lat, 0.5), BlockLatencyP90: quantile(lat, 0.9),
		PeakExpertBytes: pipe.Cache().Stats().Peak, CacheBudgetBytes: budget}
	decodeTokens := len(prompts) * (o.Tokens - 1)
	mr.DecodeTokensPerSecond = float64(decodeTokens) / elapsed.Seconds()
	var stall float64
	var hits, predHits, predMisses int64
	for _, s := range pipe.Stats() {
		stall += s.StallSeconds
		mr.BytesFetched += s.FetchedBytes
		hits += s.CacheHits + s.CacheMisses
		predHits += s.PredictionHits
		predMisses += s.PredictionMisses
		mr.Refetches += s.Refetches
	}
	mr.StallFraction = stall / elapsed.Seconds()
	mr.StallSecondsPerBlock = stall / float64(len(lat))
	info := w.Model().Info()
	mr.Blocks = blockResults(pipe.Stats(), perBlock, info)
	if wm == worker.ModePregated || wm == worker.ModeSpeculative {
		r := 0.0
		if predHits+predMisses > 0 {
			r = float64(predHits) / float64(predHits+predMisses)
		}
		mr.Recall = &r
	}
	rs := &runStats{}
	man, _, err := lc.Placement().Manifest(ctx, name)
	if err != nil {
		return ModeResult{}, nil, err
	}
	for _, e := range man.Experts { // blob sizes: what the cache holds
		rs.totalExpertBytes += e.Size
		rs.expertBytes = max(rs.expertBytes, e.Size)
	}
	nBlocks := len(info.MoEBlocks)
	rs.activePerBlock = float64(hits) / float64(len(lat))
	rs.denseBytesPerBlock = float64(info.DenseBytes) / float64(nBlocks)
	return mr, rs, nil
}

// blockResults are the per-block rows of a run: the blocks the decode steps ran (samples[b], one a
// step), with each one's stall per step and prediction recall.
func blockResults(stats []worker.BlockStats, samples [][]time.Duration, info engine.Info) []BlockResult {
	preGated := map[int]bool{}
	for _, b := range info.MoEBlocks {
		if b.PreGateFor >= 0 {
			preGated[b.PreGateFor] = true
		}
	}
	var out []BlockResult
	for b, s := range stats {
		if b >= len(samples) || len(samples[b]) == 0 {
			continue
		}
		lat := make([]float64, len(samples[b]))
		for i, d := range samples[b] {
			lat[i] = d.Seconds()
		}
		slices.Sort(lat)
		br := BlockResult{Block: b, PreGated: preGated[b], StallSecondsPerStep: s.StallSeconds / float64(len(samples[b])),
			LatencySecondsP50: quantile(lat, 0.5), CacheMisses: s.CacheMisses}
		if n := s.PredictionHits + s.PredictionMisses; n > 0 {
			r := float64(s.PredictionHits) / float64(n)
			br.Recall = &r
		}
		out = append(out, br)
	}
	return out
}

func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
