package engine

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// Tolerances recommended by the fixtures' README for a float32 implementation.
const (
	atolHidden = 1e-4
	rtolHidden = 1e-4
	atolProb   = 1e-5
)

type fixture struct {
	ckpt   *model.Checkpoint
	golden *model.Checkpoint
}

func openFixture(t testing.TB, name string) fixture {
	t.Helper()
	dir := filepath.Join("..", "testdata", name)
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	golden, err := model.OpenTensorFile(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ckpt.Close(); golden.Close() })
	return fixture{ckpt: ckpt, golden: golden}
}

func (f fixture) ints(t testing.TB, name string, shape ...int) [][]int {
	t.Helper()
	v, err := f.golden.Int64(name, shape...)
	if err != nil {
		t.Fatal(err)
	}
	rows := shape[0]
	cols := len(v) / rows
	out := make([][]int, rows)
	for r := range rows {
		for _, x := range v[r*cols : (r+1)*cols] {
			out[r] = append(out[r], int(x))
		}
	}
	return out
}

func (f fixture) floats(t testing.TB, name string, shape ...int) []float32 {
	t.Helper()
	v, err := f.golden.Float32(name, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// traceRec records routing decisions per MoE block, appended in call order.
type traceRec struct {
	logits  map[int][]float32
	choices map[int][]routing.Choice
}

func newTrace() *traceRec {
	return &traceRec{logits: map[int][]float32{}, choices: map[int][]routing.Choice{}}
}

func (r *traceRec) Route(block int, logits []float32, choices []routing.Choice) {
	r.logits[block] = append(r.logits[block], logits...)
	r.choices[block] = append(r.choices[block], choices...)
}

func assertClose(t testing.TB, what string, got, want []float32, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	worst, at := 0.0, -1
	for i := range got {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if d > atol+rtol*math.Abs(float64(want[i])) && d > worst {
			worst, at = d, i
		}
	}
	if at >= 0 {
		t.Fatalf("%s: element %d = %v, want %v (|diff| %.3g > atol %g + rtol %g)", what, at, got[at], want[at], worst, atol, rtol)
	}
}

func newCPU(t testing.TB, threads int) *compute.CPU {
	cpu := compute.NewCPU(threads)
	t.Cleanup(cpu.Close)
	return cpu
}

func TestSwitchGolden(t *testing.T) {
	for _, name := range []string{"switch-tiny", "switch-tiny-pregated"} {
		t.Run(name, func(t *testing.T) {
			f := openFixture(t, name)
			cfg := f.ckpt.Config().Switch
			d, V, E := cfg.DModel, cfg.VocabSize, cfg.NumExperts
			tr := newTrace()
			m, err := LoadSwitch(f.ckpt, newCPU(t, 2), Options{Tracer: tr})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := m.Info().PreGated, name == "switch-tiny-pregated"; got != want {
				t.Fatalf("PreGated = %v, want %v", got, want)
			}
			ids := f.ints(t, "input_ids", 2, 12)
			mask := f.ints(t, "attention_mask", 2, 12)
			ctx := context.Background()

			// Encoder, padded batch with mask: every position, pads included, as HF computes it.
			seqs, err := m.StartMasked(ctx, ids, mask)
			if err != nil {
				t.Fatal(err)
			}
			var enc []float32
			for _, s := range seqs {
				h := make([]float32, s.enc.hidden.Len())
				if err := m.be.Download(h, s.enc.hidden); err != nil {
					t.Fatal(err)
				}
				enc = append(enc, h...)
			}
			assertClose(t, "encoder_last_hidden_state", enc, f.floats(t, "encoder_last_hidden_state", 2, 12, d), atolHidden, rtolHidden)

			// Decoder, teacher forcing.
			dec := f.ints(t, "decoder_input_ids", 2, 7)
			for i, s := range seqs {
				s.Pending = dec[i]
			}
			logits, err := m.Step(ctx, seqs, true)
			if err != nil {
				t.Fatal(err)
			}
			assertClose(t, "logits", slices.Concat(logits...), f.floats(t, "logits", 2, 7, V), atolHidden, rtolHidden)

			// Routing: MoE blocks are encoder.block.1, encoder.block.3, decoder.block.1, decoder.block.3.
			for bi, blk := range m.Info().MoEBlocks {
				stack, tokens := "encoder", 12
				if bi >= 2 {
					stack, tokens = "decoder", 7
				}
				prefix := "router." + blk.Name
				if !slices.Contains([]string{"encoder.block.1", "encoder.block.3", "decoder.block.1", "decoder.block.3"}, blk.Name) || blk.Name[:len(stack)] != stack {
					t.Fatalf("MoE block %d is %s", bi, blk.Name)
				}
				assertClose(t, prefix+".logits", tr.logits[bi], f.floats(t, prefix+".logits", 2, tokens, E), atolHidden, rtolHidden)
				wantIdx := f.ints(t, prefix+".expert_index", 2, tokens)
				wantProb := f.floats(t, prefix+".expert_prob", 2, tokens)
				var gotProb []float32
				for i, c := range tr.choices[bi] {
					if c.Expert != wantIdx[i/tokens][i%tokens] {
						t.Fatalf("%s.expert_index[%d] = %d, want %d", prefix, i, c.Expert, wantIdx[i/tokens][i%tokens])
					}
					gotProb = append(gotProb, c.Weight)
				}
				assertClose(t, prefix+".expert_prob", gotProb, wantProb, atolProb, 0)
			}

			// Greedy generation from unpadded prompts, batched, with the KV cache.
			want := f.ints(t, "generated_ids", 2, 10)
			prompts := unpad(ids, mask)
			res, _, err := Generate(ctx, m, prompts, GenerateOptions{MaxNewTokens: 10})
			if err != nil {
				t.Fatal(err)
			}
			for i := range res {
				if !slices.Equal(res[i].GeneratedIDs, want[i]) {
					t.Fatalf("row %d generated %v, want %v", i, res[i].GeneratedIDs, want[i])
				}
			}
			checkDecodingAgrees(t, m, prompts, []int{cfg.DecoderStartTokenID}, want)
		})
	}
}

func TestMixtralGolden(t *testing.T) {
	f := openFixture(t, "mixtral-tiny")
	cfg := f.ckpt.Config().Mixtral
	V, E := cfg.VocabSize, cfg.NumLocalExperts
	ids := f.ints(t, "input_ids", 2, 10)
	mask := f.ints(t, "attention_mask", 2, 10)
	prompts := unpad(ids, mask)
	ctx := context.Background()
	wantLogits := f.floats(t, "logits", 2, 10, V)

	// One row at a time, then both rows batched: each must match HF on the real positions.
	for _, batched := range []bool{false, true} {
		t.Run(fmt.Sprintf("batched=%v", batched), func(t *testing.T) {
			tr := newTrace()
			m, err := LoadMixtral(f.ckpt, newCPU(t, 2), Options{Tracer: tr})
			if err != nil {
				t.Fatal(err)
			}
			var logits [][]float32
			if batched {
				seqs, err := m.Start(ctx, prompts)
				if err != nil {
					t.Fatal(err)
				}
				if logits, err = m.Step(ctx, seqs, true); err != nil {
					t.Fatal(err)
				}
			} else {
				for _, p := range prompts {
					seqs, err := m.Start(ctx, [][]int{p})
					if err != nil {
						t.Fatal(err)
					}
					l, err := m.Step(ctx, seqs, true)
					if err != nil {
						t.Fatal(err)
					}
					logits = append(logits, l...)
				}
			}
			for r, p := range prompts {
				assertClose(t, fmt.Sprintf("logits row %d", r), logits[r], wantLogits[r*10*V:(r*10+len(p))*V], atolHidden, rtolHidden)
			}
			for l := range cfg.NumHiddenLayers {
				prefix := fmt.Sprintf("router.layers.%d", l)
				gl := f.floats(t, prefix+".logits", 2, 10, E)
				gi := f.ints(t, prefix+".expert_index", 2, 10, 2)
				gw := f.floats(t, prefix+".expert_weight", 2, 10, 2)
				tok := 0
				for r, p := range prompts {
					n := len(p)
					assertClose(t, prefix+".logits", tr.logits[l][tok*E:(tok+n)*E], gl[r*10*E:(r*10+n)*E], atolHidden, rtolHidden)
					var w []float32
					for i := range n * 2 {
						c := tr.choices[l][tok*2+i]
						if c.Expert != gi[r][i] {
							t.Fatalf("%s.expert_index row %d token %d rank %d = %d, want %d", prefix, r, i/2, i%2, c.Expert, gi[r][i])
						}
						w = append(w, c.Weight)
					}
					assertClose(t, prefix+".expert_weight", w, gw[r*20:r*20+n*2], atolProb, 0)
					tok += n
				}
			}
		})
	}

	m, err := LoadMixtral(f.ckpt, newCPU(t, 2), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := f.ints(t, "generated_ids", 2, 10)
	res, _, err := Generate(ctx, m, prompts, GenerateOptions{MaxNewTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range res {
		if !slices.Equal(res[i].GeneratedIDs, want[i]) {
			t.Fatalf("row %d generated %v, want %v", i, res[i].GeneratedIDs, want[i])
		}
	}
	checkDecodingAgrees(t, m, prompts, nil, want)
}

// checkDecodingAgrees decodes each prompt alone with full forward passes (no cache reuse: a new
// sequence per step over the whole prefix) and one row at a time with the cache, and requires
// both to give want. decPrefix is what the decoder starts from (encoder-decoder models).
func checkDecodingAgrees(t *testing.T, m Model, prompts [][]int, decPrefix []int, want [][]int) {
	t.Helper()
	ctx := context.Background()
	for r, p := range prompts {
		// One row at a time, KV cache.
		res, _, err := Generate(ctx, m, [][]int{p}, GenerateOptions{MaxNewTokens: len(want[r])})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res[0].GeneratedIDs, want[r]) {
			t.Fatalf("row %d alone generated %v, want %v", r, res[0].GeneratedIDs, want[r])
		}
		// Full forward passes.
		var gen []int
		for range want[r] {
			seqs, err := m.Start(ctx, [][]int{p})
			if err != nil {
				t.Fatal(err)
			}
			if decPrefix != nil {
				seqs[0].Pending = slices.Concat(decPrefix, gen)
			} else {
				seqs[0].Pending = slices.Concat(p, gen)
			}
			logits, err := m.Step(ctx, seqs, false)
			if err != nil {
				t.Fatal(err)
			}
			gen = append(gen, compute.ArgMax(logits[0]))
		}
		if !slices.Equal(gen, want[r]) {
			t.Fatalf("row %d full-forward generated %v, want %v", r, gen, want[r])
		}
	}
}

func unpad(ids, mask [][]int) [][]int {
	out := make([][]int, len(ids))
	for r := range ids {
		for j, id := range ids[r] {
			if mask[r][j] != 0 {
				out[r] = append(out[r], id)
			}
		}
	}
	return out
}
