package bench

import (
	"fmt"
	"image/color"
	"io"
	"slices"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WriteTable prints r as the paper's comparison: one row per mode, then c, f, the ideal bound and
// the headline ratios with their targets.
func WriteModesTable(w io.Writer, r *ModesResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "MODE\tBLOCK P50 (ms)\tBLOCK P90 (ms)\tDECODE TOK/S\tSTALL\tFETCHED\tPEAK EXPERT BYTES\tCACHE BUDGET\tRECALL\t")
	for _, m := range r.Modes {
		recall := "-"
		if m.Recall != nil {
			recall = fmt.Sprintf("%.3f", *m.Recall)
		}
		budget := humanize.IBytes(uint64(m.CacheBudgetBytes))
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.2f\t%.1f%%\t%s\t%s\t%s\t%s\t\n", m.Mode, m.BlockLatencyP50*1e3, m.BlockLatencyP90*1e3,
			m.DecodeTokensPerSecond, 100*m.StallFraction, humanize.IBytes(uint64(m.BytesFetched)), humanize.IBytes(uint64(m.PeakExpertBytes)), budget, recall)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := writeBlockStalls(w, r.Modes); err != nil {
		return err
	}
	link := fmt.Sprintf("paced at %s/s", humanize.SIWithDigits(r.LinkBytesPerSecond, 3, "B"))
	if r.LinkBytesPerSecond == 0 {
		link = "not paced (loopback)"
	}
	if r.Regime != "" {
		link += " (regime " + r.Regime + ")"
	}
	fmt.Fprintf(w, "\nmodel %s (%s), batch %d, %d prompt + %d new tokens; link %s; compute priority %s\n", r.Model, r.Arch, r.Batch, r.PromptTokens, r.Tokens, link, r.ComputePriority)
	fmt.Fprintf(w, "c = %.3f ms per block (resident), f = %.3f ms per block (ondemand stall; %s of active experts per block), f/c = %.2f\n",
		r.ComputeSecondsPerBlock*1e3, r.FetchSecondsPerBlock*1e3, humanize.IBytes(uint64(r.ActiveExpertBytesPerBlock)), r.FetchSecondsPerBlock/r.ComputeSecondsPerBlock)
	fmt.Fprintf(w, "ideal ondemand/pregated = (c+f)/max(c,f) = %.3f\n", r.IdealOndemandOverPregated)
	sp := r.RatioSpread
	spread := func(s *Spread, target string) string {
		if s == nil {
			return ""
		}
		out := fmt.Sprintf("  [%.3f–%.3f over %d rounds", s.Min, s.Max, s.Rounds)
		if target != "" {
			out += fmt.Sprintf(", %d met %s", s.Met, target)
		}
		return out + "]"
	}
	rt := r.Ratios
	fmt.Fprintf(w, "%d rounds, modes interleaved; ratios are medians over rounds [range]\n", r.Rounds)
	if rt.PregatedOverResident > 0 {
		fmt.Fprintf(w, "pregated / resident block latency   = %.3f%s   (target ≤ 1.10; paper 1.19–1.27)\n", rt.PregatedOverResident,
			spread(sp.PregatedOverResident, "≤ 1.10"))
	}
	if rt.NoAheadOverResident > 0 {
		fmt.Fprintf(w, "pregated-no-ahead / resident        = %.3f%s   (the same without the first block's step-ahead prefetch)\n", rt.NoAheadOverResident,
			spread(sp.NoAheadOverResident, "≤ 1.10"))
	}
	if rt.PregatedOverNoAheadTokens > 0 {
		fmt.Fprintf(w, "pregated / pregated-no-ahead decode tokens/s = %.3f%s\n", rt.PregatedOverNoAheadTokens, spread(sp.PregatedOverNoAheadTokens, ""))
	}
	if sp.FirstBlockStallNoAhead != nil {
		ms := func(s *Spread) string {
			if s == nil {
				return "0 (never stalled)"
			}
			return fmt.Sprintf("%.3f ms  [%.3f–%.3f over %d rounds]", s.Median*1e3, s.Min*1e3, s.Max*1e3, s.Rounds)
		}
		fmt.Fprintf(w, "first-block stall per step: pregated-no-ahead %s\n", ms(sp.FirstBlockStallNoAhead))
		fmt.Fprintf(w, "                            pregated          %s\n", ms(sp.FirstBlockStallPregated))
	}
	if rt.OndemandOverPregated > 0 {
		fmt.Fprintf(w, "ondemand / pregated block latency   = %.3f%s   (paper 1.56–1.89)\n", rt.OndemandOverPregated, spread(sp.OndemandOverPregated, ""))
		fmt.Fprintf(w, "  of the ideal bound (c+f)/max(c,f) = %.3f%s   (target ≥ 0.95)\n", rt.OndemandOverIdealBound,
			spread(sp.OndemandOverIdealBound, "≥ 0.95"))
	}
	if rt.PrefetchAllOverPregated > 0 {
		fmt.Fprintf(w, "prefetch-all / pregated block latency = %.3f%s\n", rt.PrefetchAllOverPregated, spread(sp.PrefetchAllOverPregated, ""))
	}
	if rt.SpeculativeOverPregated > 0 {
		fmt.Fprintf(w, "speculative / pregated block latency  = %.3f%s\n", rt.SpeculativeOverPregated, spread(sp.SpeculativeOverPregated, ""))
	}
	if rt.PregatedPeakOverResident > 0 {
		fmt.Fprintf(w, "pregated / resident peak expert bytes = %.3f%s\n", rt.PregatedPeakOverResident, spread(sp.PregatedPeakOverResident, ""))
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	return nil
}

// writeBlockStalls prints each mode's stall per MoE block and decode step, with the recall of the
// block's predictions in brackets where anything predicted it: the first block of a stack, which
// no pre-gate routes, shows what the step-ahead prefetch hides.
func writeBlockStalls(w io.Writer, modes []ModeResult) error {
	var blocks []BlockResult
	for _, m := range modes {
		if len(m.Blocks) > len(blocks) {
			blocks = slices.Clone(m.Blocks)
		}
	}
	for _, m := range modes { // the modes without pre-gates run a model without them
		for _, b := range m.Blocks {
			if i := slices.IndexFunc(blocks, func(x BlockResult) bool { return x.Block == b.Block }); i >= 0 && b.PreGated {
				blocks[i].PreGated = true
			}
		}
	}
	if len(blocks) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nstall per MoE block (ms per decode step; recall of its predictions in brackets; * routed by a pre-gate)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "MODE\t")
	for _, b := range blocks {
		mark := ""
		if b.PreGated {
			mark = "*"
		}
		fmt.Fprintf(tw, "BLOCK %d%s\t", b.Block, mark)
	}
	fmt.Fprintln(tw)
	for _, m := range modes {
		fmt.Fprintf(tw, "%s\t", m.Mode)
		for _, b := range blocks {
			i := slices.IndexFunc(m.Blocks, func(x BlockResult) bool { return x.Block == b.Block })
			if i < 0 {
				fmt.Fprint(tw, "-\t")
				continue
			}
			x := m.Blocks[i]
			cell := fmt.Sprintf("%.3f", x.StallSecondsPerStep*1e3)
			if x.Recall != nil {
				cell += fmt.Sprintf(" (%.2f)", *x.Recall)
			}
			fmt.Fprintf(tw, "%s\t", cell)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// Plot writes a bar chart of each mode's block latency (p50, with p90 as a thin bar beside it), as
// the paper's figure shows, to a PNG file.
func PlotModes(r *ModesResult, path string) error {
	p := plot.New()
	link := "loopback"
	if r.LinkBytesPerSecond > 0 {
		link = humanize.SIWithDigits(r.LinkBytesPerSecond, 3, "B") + "/s"
	}
	p.Title.Text = fmt.Sprintf("MoE block latency per mode: %s, link %s, f/c = %.2f", r.Model, link, r.FetchSecondsPerBlock/r.ComputeSecondsPerBlock)
	p.Y.Label.Text = "ms per MoE block (decode)"
	p50 := make(plotter.Values, len(r.Modes))
	p90 := make(plotter.Values, len(r.Modes))
	names := make([]string, len(r.Modes))
	for i, m := range r.Modes {
		p50[i], p90[i], names[i] = m.BlockLatencyP50*1e3, m.BlockLatencyP90*1e3, m.Mode
	}
	w := vg.Points(22)
	b50, err := plotter.NewBarChart(p50, w)
	if err != nil {
		return err
	}
	b50.LineStyle.Width = vg.Length(0)
	b50.Color = plotter.DefaultLineStyle.Color
	b50.Offset = -w / 2
	b90, err := plotter.NewBarChart(p90, w)
	if err != nil {
		return err
	}
	b90.LineStyle.Width = vg.Length(0)
	b90.Color = plotterGray
	b90.Offset = w / 2
	p.Add(b50, b90)
	p.Legend.Add("p50", b50)
	p.Legend.Add("p90", b90)
	p.Legend.Top = true
	p.NominalX(names...)
	// The ideal overlap line: resident's p50 is what perfect hiding of fetches would give.
	if len(r.Modes) > 0 {
		ideal, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: r.ComputeSecondsPerBlock * 1e3}, {X: float64(len(r.Modes)) - 0.5, Y: r.ComputeSecondsPerBlock * 1e3}})
		if err != nil {
			return err
		}
		ideal.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		p.Add(ideal)
		p.Legend.Add("c (compute only)", ideal)
	}
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

var plotterGray = color.Gray{Y: 160}
