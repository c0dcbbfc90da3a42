package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// TestRunTinyPreset runs every mode on a tiny Switch preset and checks the report's shape and the
// relations that hold whatever the machine: resident fetches nothing during decode, pregated's
// pre-gate predictions are exact, its first decoder block is predicted a step ahead (and not in the
// baseline row), the modes' peaks stay within their budgets, the JSON keys are the documented ones,
// and the chart is a PNG.
func TestRunTinyPreset(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster five times")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := RunModes(ctx, ModesOptions{Preset: "switch-tiny", Tokens: 8, PromptTokens: 6, Stores: 2, Threads: 1, Rounds: 2,
		StepAheadBaseline: true, ComputePriority: compute.PriorityMedium, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// The priority the run had, and a note where it could not have the one asked for.
	if perr := compute.CheckPriority(compute.PriorityMedium, 1); perr == nil && res.ComputePriority != "medium" {
		t.Errorf("compute priority %q, want medium", res.ComputePriority)
	} else if perr != nil && (res.ComputePriority != "normal" || !slices.ContainsFunc(res.Notes, func(n string) bool { return strings.Contains(n, "compute priority medium") })) {
		t.Errorf("compute priority %q without the right to raise threads, notes %q: want normal and a note", res.ComputePriority, res.Notes)
	}
	if len(res.Modes) != len(worker.Modes)+1 {
		t.Fatalf("%d modes reported, want %d and the baseline", len(res.Modes), len(worker.Modes))
	}
	for _, m := range res.Modes {
		if m.BlockLatencyP50 <= 0 || m.BlockLatencyP90 < m.BlockLatencyP50 || m.DecodeTokensPerSecond <= 0 {
			t.Errorf("%s: %+v", m.Mode, m)
		}
		if m.Mode != string(worker.ModeResident) && m.PeakExpertBytes > m.CacheBudgetBytes {
			t.Errorf("%s: peak %d over the budget %d", m.Mode, m.PeakExpertBytes, m.CacheBudgetBytes)
		}
		switch worker.Mode(m.Mode) {
		case worker.ModeResident:
			if m.BytesFetched != 0 || m.Recall != nil {
				t.Errorf("resident fetched %d bytes during decode, recall %v", m.BytesFetched, m.Recall)
			}
		case worker.ModePregated, modePregatedNoAhead:
			if len(m.Blocks) == 0 {
				t.Fatalf("%s: no per-block results", m.Mode)
			}
			for _, b := range m.Blocks {
				switch {
				case b.PreGated && (b.Recall == nil || *b.Recall != 1):
					t.Errorf("%s: block %d (pre-gated) recall %v, want 1", m.Mode, b.Block, b.Recall)
				case !b.PreGated && (b.Recall != nil) != (m.Mode == string(worker.ModePregated)):
					t.Errorf("%s: first block %d recall %v: predicted a step ahead only in pregated", m.Mode, b.Block, b.Recall)
				}
			}
		case worker.ModeOnDemand:
			if m.BytesFetched == 0 {
				t.Error("ondemand fetched nothing")
			}
		}
	}
	if res.ComputeSecondsPerBlock <= 0 || res.FetchSecondsPerBlock <= 0 || res.IdealOndemandOverPregated < 1 || res.IdealOndemandOverPregated > 2 {
		t.Errorf("c %g, f %g, ideal %g", res.ComputeSecondsPerBlock, res.FetchSecondsPerBlock, res.IdealOndemandOverPregated)
	}
	if res.Ratios.PregatedOverResident <= 0 || res.Ratios.OndemandOverPregated <= 0 || !res.RandomPreGates {
		t.Errorf("ratios %+v, random pre-gates %v", res.Ratios, res.RandomPreGates)
	}

	if res.Rounds != 2 || len(res.RoundRatios) != 2 {
		t.Errorf("%d rounds, %d rounds' ratios, want 2", res.Rounds, len(res.RoundRatios))
	}
	for name, sp := range map[string]*Spread{"pregated/resident": res.RatioSpread.PregatedOverResident, "ondemand/ideal": res.RatioSpread.OndemandOverIdealBound} {
		if sp == nil || sp.Rounds != 2 || sp.Min > sp.Median || sp.Median > sp.Max || sp.Met > sp.Rounds {
			t.Errorf("%s spread %+v", name, sp)
		}
	}

	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"compute_seconds_per_block", "fetch_seconds_per_block", "ideal_ondemand_over_pregated", "modes",
		"rounds", "round_ratios", "ratio_spread", "compute_priority"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	mode := generic["modes"].([]any)[0].(map[string]any)
	for _, k := range []string{"mode", "block_latency_seconds_p50", "block_latency_seconds_p90", "decode_tokens_per_second",
		"stall_fraction", "bytes_fetched", "peak_expert_bytes", "recall", "blocks"} {
		if _, ok := mode[k]; !ok {
			t.Errorf("mode JSON lacks %q", k)
		}
	}

	var table bytes.Buffer
	if err := WriteModesTable(&table, res); err != nil || !strings.Contains(table.String(), "pregated / resident") ||
		!strings.Contains(table.String(), "over 2 rounds") || !strings.Contains(table.String(), "stall per MoE block") {
		t.Errorf("table: %v\n%s", err, table.String())
	}
	png := filepath.Join(t.TempDir(), "chart.png")
	if err := PlotModes(res, png); err != nil {
		t.Fatal(err)
	}
	head, err := os.ReadFile(png)
	if err != nil || len(head) < 8 || string(head[1:4]) != "PNG" {
		t.Fatalf("chart is not a PNG (%v)", err)
	}
}

func TestOptionsErrors(t *testing.T) {
	for _, o := range []ModesOptions{{}, {Preset: "switch-tiny", Regime: "carrier-pigeon"}} {
		if _, err := RunModes(context.Background(), ModesOptions{Preset: o.Preset, Regime: o.Regime, Dir: t.TempDir()}); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

// TestAggregateRounds checks the medians, spreads and target counts over rounds on known numbers:
// each mode's row is its median round, each ratio the median of the rounds' ratios.
func TestAggregateRounds(t *testing.T) {
	row := func(m worker.Mode, p50, stall float64) ModeResult {
		return ModeResult{Mode: string(m), BlockLatencyP50: p50, StallSecondsPerBlock: stall, PeakExpertBytes: 10}
	}
	// c, pregated, ondemand (its stall is f) per round: pregated/resident 1.05, 1.20, 1.08.
	var rounds []map[worker.Mode]ModeResult
	for _, r := range [][3]float64{{1.0, 1.05, 1.5}, {1.0, 1.20, 1.6}, {2.0, 2.16, 3.0}} {
		rounds = append(rounds, map[worker.Mode]ModeResult{
			worker.ModeResident: row(worker.ModeResident, r[0], 0),
			worker.ModePregated: row(worker.ModePregated, r[1], 0),
			worker.ModeOnDemand: row(worker.ModeOnDemand, r[2], r[0]/2), // f = c/2: ideal bound 1.5
		})
	}
	res := &ModesResult{}
	aggregateRounds(res, rounds, []worker.Mode{worker.ModeOnDemand, worker.ModePregated})
	if res.Rounds != 3 || len(res.Modes) != 3 {
		t.Fatalf("%d rounds, %d rows", res.Rounds, len(res.Modes))
	}
	sp := res.RatioSpread.PregatedOverResident
	if got := res.Ratios.PregatedOverResident; got < 1.0799 || got > 1.0801 || sp.Min < 1.0499 || sp.Max < 1.1999 || sp.Met != 2 {
		t.Errorf("pregated/resident %v, spread %+v: want median 1.08, range 1.05–1.20, 2 rounds ≤ 1.10", got, sp)
	}
	// ondemand/pregated: 1.5/1.05, 1.6/1.2, 3.0/2.16; over the ideal 1.5: 0.952, 0.889, 0.926.
	od := res.RatioSpread.OndemandOverIdealBound
	if got := res.Ratios.OndemandOverIdealBound; got < 0.925 || got > 0.927 || od.Met != 1 {
		t.Errorf("ondemand/ideal %v, spread %+v: want median 0.926, 1 round ≥ 0.95", got, od)
	}
	if res.ComputeSecondsPerBlock != 1.0 || res.FetchSecondsPerBlock != 0.5 || res.IdealOndemandOverPregated != 1.5 {
		t.Errorf("c %v f %v ideal %v", res.ComputeSecondsPerBlock, res.FetchSecondsPerBlock, res.IdealOndemandOverPregated)
	}
	for _, m := range res.Modes {
		if m.Mode == string(worker.ModePregated) && m.BlockLatencyP50 != 1.20 {
			t.Errorf("pregated's row is the round with p50 %v, want the median round's 1.20", m.BlockLatencyP50)
		}
	}
}

// TestFirstBlockStallOverRounds: the first block's stall gets a median over every round its rows
// ran, a round where it never stalled (0) included; blocks routed by a pre-gate are not it.
func TestFirstBlockStallOverRounds(t *testing.T) {
	row := func(m worker.Mode, p50, firstStall float64) ModeResult {
		return ModeResult{Mode: string(m), BlockLatencyP50: p50, Blocks: []BlockResult{
			{Block: 6, StallSecondsPerStep: firstStall}, {Block: 7, PreGated: true, StallSecondsPerStep: 9}}}
	}
	var rounds []map[worker.Mode]ModeResult
	for _, r := range [][2]float64{{0, 1.0}, {0, 1.2}, {0.3, 1.1}} { // pregated's and the baseline's first-block stall
		rounds = append(rounds, map[worker.Mode]ModeResult{
			worker.ModeResident: {Mode: string(worker.ModeResident), BlockLatencyP50: 1},
			worker.ModePregated: row(worker.ModePregated, 1.1, r[0]),
			modePregatedNoAhead: row(modePregatedNoAhead, 1.3, r[1]),
		})
	}
	res := &ModesResult{}
	aggregateRounds(res, rounds, []worker.Mode{worker.ModePregated, modePregatedNoAhead})
	on, off := res.RatioSpread.FirstBlockStallPregated, res.RatioSpread.FirstBlockStallNoAhead
	if on == nil || on.Rounds != 3 || on.Median != 0 || on.Max != 0.3 {
		t.Errorf("pregated first-block stall spread %+v: want median 0, max 0.3 over 3 rounds", on)
	}
	if off == nil || off.Rounds != 3 || off.Median != 1.1 {
		t.Errorf("baseline first-block stall spread %+v: want median 1.1 over 3 rounds", off)
	}
	if len(res.Modes) != 3 {
		t.Errorf("%d rows, want resident, pregated and the baseline", len(res.Modes))
	}
}
