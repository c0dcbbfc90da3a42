package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/worker"
)

// TestRunTinyPreset runs every mode on a tiny Switch preset and checks the report's shape and the
// relations that hold whatever the machine: resident fetches nothing during decode, pregated's
// predictions are exact, the modes' peaks stay within their budgets, the JSON keys are the
// documented ones, and the chart is a PNG.
func TestRunTinyPreset(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster five times")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := RunModes(ctx, ModesOptions{Preset: "switch-tiny", Tokens: 8, PromptTokens: 6, Stores: 2, Threads: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Modes) != len(worker.Modes) {
		t.Fatalf("%d modes reported, want %d", len(res.Modes), len(worker.Modes))
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
		case worker.ModePregated:
			if m.Recall == nil || *m.Recall != 1 {
				t.Errorf("pregated recall %v, want 1", m.Recall)
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

	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"compute_seconds_per_block", "fetch_seconds_per_block", "ideal_ondemand_over_pregated", "modes"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
	mode := generic["modes"].([]any)[0].(map[string]any)
	for _, k := range []string{"mode", "block_latency_seconds_p50", "block_latency_seconds_p90", "decode_tokens_per_second",
		"stall_fraction", "bytes_fetched", "peak_expert_bytes", "recall"} {
		if _, ok := mode[k]; !ok {
			t.Errorf("mode JSON lacks %q", k)
		}
	}

	var table bytes.Buffer
	if err := WriteModesTable(&table, res); err != nil || !strings.Contains(table.String(), "pregated / resident") {
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
