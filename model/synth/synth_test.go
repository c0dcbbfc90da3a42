package synth

import (
	"bytes"
	"errors"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
)

// The config writer must reproduce HF's config.json byte for byte (the fixtures were written so).
func TestMarshalConfigMatchesFixtures(t *testing.T) {
	for _, give := range []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"} {
		t.Run(give, func(t *testing.T) {
			path := filepath.Join("..", "..", "testdata", give, "config.json")
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := model.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := marshalConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("marshalConfig differs from %s:\n%s", path, got)
			}
		})
	}
}

func TestPyFloat(t *testing.T) {
	tests := []struct {
		give float64
		want string
	}{
		{1e-6, "1e-06"}, {1e-5, "1e-05"}, {0.001, "0.001"}, {0.0001, "0.0001"}, {0.1, "0.1"}, {0, "0.0"},
		{1, "1.0"}, {10000, "10000.0"}, {1e6, "1000000.0"}, {1e16, "1e+16"}, {1.5e-7, "1.5e-07"}, {-2.5, "-2.5"},
	}
	for _, tt := range tests {
		if got, err := pyFloat(tt.give); err != nil || got != tt.want {
			t.Errorf("pyFloat(%v) = %q, %v; want %q", tt.give, got, err, tt.want)
		}
	}
	if _, err := pyFloat(math.NaN()); err == nil {
		t.Error("pyFloat(NaN) succeeded")
	}
}

func paramCount(t *testing.T, opts Options) int64 {
	t.Helper()
	cfg, err := Config(opts)
	if err != nil {
		t.Fatal(err)
	}
	specs, err := model.ExpectedTensors(cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, s := range specs {
		n += int64(numElements(s.Shape))
	}
	return n
}

// Parameter counts of the published models pin the presets' shapes.
func TestPresets(t *testing.T) {
	tests := []struct {
		give     string
		min, max int64
	}{
		{"switch-base-8", 615e6, 625e6},     // google/switch-base-8: 619M
		{"switch-base-128", 7.2e9, 7.5e9},   // ~7.4B
		{"switch-large-128", 26e9, 26.5e9},  // ~26B
		{"mixtral-8x7b", 46.6e9, 46.8e9},    // 46.7B
		{"mixtral-bench", 790e6, 792e6},     // 0.79B
		{"switch-tiny", 822912, 822912},     // testdata/switch-tiny
		{"mixtral-tiny", 903744, 903744},    // testdata/mixtral-tiny
		{"switch-base-256", 14.5e9, 15.0e9}, // ~14.7B
	}
	for _, tt := range tests {
		if n := paramCount(t, Options{Preset: tt.give}); n < tt.min || n > tt.max {
			t.Errorf("%s: %d parameters, want [%d, %d]", tt.give, n, tt.min, tt.max)
		}
	}
	for _, name := range Presets() {
		if _, err := Config(Options{Preset: name}); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
	}
	if !slices.IsSorted(Presets()) {
		t.Errorf("Presets() not sorted: %v", Presets())
	}
}

func TestConfigOverrides(t *testing.T) {
	cfg, err := Config(Options{Arch: ArchSwitch, Preset: "switch-base-8", Layers: 4, Experts: 4, DModel: 32, DFF: 64, Heads: 4, Vocab: 100, DType: model.BF16})
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Switch
	if s.NumLayers != 4 || s.NumDecoderLayers != 4 || s.NumSparseEncoderLayers != 2 || s.EncoderSparseStep != 2 ||
		s.NumExperts != 4 || s.DModel != 32 || s.DKV != 8 || s.NumHeads != 4 || s.DFF != 64 || s.VocabSize != 100 ||
		s.TorchDtype != "bfloat16" {
		t.Errorf("switch overrides: %+v", s)
	}
	cfg, err = Config(Options{Arch: ArchMixtral, Preset: "mixtral-bench", Layers: 2, DModel: 64, DFF: 96, Experts: 4})
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Mixtral
	if m.NumHiddenLayers != 2 || m.HiddenSize != 64 || m.HeadDim != 4 || m.IntermediateSize != 96 || m.NumLocalExperts != 4 || m.TorchDtype != "float32" {
		t.Errorf("mixtral overrides: %+v", m)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		give Options
		want []string
	}{
		{"unknown preset", Options{Preset: "switch-xxl"}, []string{`"switch-xxl"`, "switch-base-8"}},
		{"arch mismatch", Options{Arch: ArchMixtral, Preset: "switch-base-8"}, []string{"switch-base-8", "switch"}},
		{"dtype", Options{Preset: "switch-base-8", DType: model.I64}, []string{`"I64"`}},
		{"heads", Options{Preset: "switch-base-8", DModel: 32}, []string{"d_model 32", "12 heads"}},
		{"pre-gates on mixtral", Options{Preset: "mixtral-tiny", PreGates: true}, []string{"pre-gates"}},
		{"negative", Options{Preset: "mixtral-tiny", Layers: -1}, []string{"layers", "-1"}},
		{"top-k above experts", Options{Preset: "mixtral-tiny", Experts: 1}, []string{"num_experts_per_tok 2 exceeds num_local_experts 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Config(tt.give)
			if !errors.Is(err, ErrOptions) {
				t.Fatalf("error = %v, want ErrOptions", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func tinySwitch(out string) Options {
	return Options{Arch: ArchSwitch, Preset: "switch-base-8", Out: out, Seed: 7,
		Layers: 4, Experts: 4, DModel: 32, DFF: 64, Heads: 4, Vocab: 300}
}

func tinyMixtral(out string) Options {
	return Options{Arch: ArchMixtral, Preset: "mixtral-bench", Out: out, Seed: 7,
		Layers: 2, Experts: 4, DModel: 32, DFF: 64, Heads: 4, Vocab: 300}
}

// dirFiles returns every file of dir with its content.
func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func TestWriteOpensAndValidates(t *testing.T) {
	tests := []struct {
		name      string
		give      Options
		wantFiles []string
		preGates  bool
	}{
		{"switch f32", tinySwitch(""), []string{"config.json", "model.safetensors"}, false},
		{"switch bf16 pre-gated", func() Options { o := tinySwitch(""); o.DType = model.BF16; o.PreGates = true; return o }(),
			[]string{"config.json", "model.safetensors"}, true},
		{"mixtral f32", tinyMixtral(""), []string{"config.json", "model.safetensors"}, false},
		{"mixtral bf16 sharded", func() Options { o := tinyMixtral(""); o.DType = model.BF16; o.MaxShardBytes = 40_000; return o }(),
			[]string{"config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
				"model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors", "model.safetensors.index.json"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.give
			opts.Out = t.TempDir()
			var calls int
			var last, total int64
			err := Write(opts, func(done, tot int64) {
				if done < last || tot <= 0 {
					t.Errorf("progress(%d, %d) after %d", done, tot, last)
				}
				calls++
				last, total = done, tot
			})
			if err != nil {
				t.Fatal(err)
			}
			if calls < 2 || last != total {
				t.Errorf("progress: %d calls, last %d of %d", calls, last, total)
			}
			var names []string
			for n := range dirFiles(t, opts.Out) {
				names = append(names, n)
			}
			slices.Sort(names)
			if !slices.Equal(names, tt.wantFiles) {
				t.Errorf("files = %v, want %v", names, tt.wantFiles)
			}
			c, err := model.OpenCheckpoint(opts.Out)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if c.HasPreGates() != tt.preGates {
				t.Errorf("HasPreGates() = %v, want %v", c.HasPreGates(), tt.preGates)
			}
			want, err := Config(opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Config(), want) {
				t.Errorf("config round trip:\n got %+v %+v %+v\nwant %+v %+v %+v", c.Config(), c.Config().Switch, c.Config().Mixtral, want, want.Switch, want.Mixtral)
			}
			wantDType := opts.DType
			if wantDType == "" {
				wantDType = model.F32
			}
			var size int64
			for _, n := range c.Names() {
				info, _ := c.Info(n)
				if info.DType != wantDType {
					t.Fatalf("tensor %q is %s, want %s", n, info.DType, wantDType)
				}
				size += info.NumBytes()
			}
			if size != total {
				t.Errorf("stored %d bytes, progress total %d", size, total)
			}
		})
	}
}

// Values do not depend on the seed's consumer (sharding, worker count) but do depend on the seed.
func TestWriteDeterministic(t *testing.T) {
	base := t.TempDir()
	write1 := func(name string, edit func(*Options), workers int) map[string][]byte {
		o := tinySwitch(filepath.Join(base, name))
		if edit != nil {
			edit(&o)
		}
		if err := write(o, nil, workers); err != nil {
			t.Fatal(err)
		}
		return dirFiles(t, o.Out)
	}
	a := write1("a", nil, 4)
	b := write1("b", nil, 1)
	if !reflect.DeepEqual(a, b) {
		t.Error("same seed, different worker counts: outputs differ")
	}
	c := write1("c", func(o *Options) { o.Seed = 8 }, 4)
	if bytes.Equal(a["model.safetensors"], c["model.safetensors"]) {
		t.Error("different seeds give identical weights")
	}
	// Sharded output holds the same values as the single file.
	write1("d", func(o *Options) { o.MaxShardBytes = 100_000 }, 2)
	single, err := model.OpenCheckpoint(filepath.Join(base, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	sharded, err := model.OpenCheckpoint(filepath.Join(base, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer sharded.Close()
	if !slices.Equal(single.Names(), sharded.Names()) {
		t.Fatalf("names differ between single and sharded output")
	}
	for _, n := range single.Names() {
		x, _, _ := single.Bytes(n)
		y, _, _ := sharded.Bytes(n)
		if !bytes.Equal(x, y) {
			t.Errorf("tensor %q differs between single and sharded output", n)
		}
	}
}

// Rewriting a directory with the other layout removes the stale files.
func TestWriteReplacesLayout(t *testing.T) {
	out := t.TempDir()
	sharded := tinyMixtral(out)
	sharded.MaxShardBytes = 50_000
	if err := Write(sharded, nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(tinyMixtral(out), nil); err != nil {
		t.Fatal(err)
	}
	files := dirFiles(t, out)
	if len(files) != 2 || files["model.safetensors"] == nil || files["config.json"] == nil {
		var names []string
		for n := range files {
			names = append(names, n)
		}
		t.Errorf("files after rewrite: %v", names)
	}
	if err := Write(sharded, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := dirFiles(t, out)["model.safetensors"]; ok {
		t.Error("stale model.safetensors left next to shards")
	}
	c, err := model.OpenCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func stats(v []float32) (mean, std, lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		mean += float64(x)
		lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
	}
	mean /= float64(len(v))
	for _, x := range v {
		std += (float64(x) - mean) * (float64(x) - mean)
	}
	return mean, math.Sqrt(std / float64(len(v))), lo, hi
}

// The weights follow the documented recipes, and a router spreads tokens over every expert.
func TestWeightStatistics(t *testing.T) {
	o := tinySwitch(t.TempDir())
	o.Vocab, o.DModel, o.Heads, o.Experts = 2000, 64, 4, 8
	if err := Write(o, nil); err != nil {
		t.Fatal(err)
	}
	c, err := model.OpenCheckpoint(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := 64
	tests := []struct {
		give    string
		wantStd float64
		uniform bool
	}{
		{model.SwitchSharedName, 0.5, false},
		{model.SwitchRouterName(model.StackEncoder, 1), 2 / math.Sqrt(float64(d)), false},
		{model.SwitchAttnName(model.StackEncoder, 0, false, "q"), 2 / math.Sqrt(float64(d*16)), false},
		{model.SwitchAttnName(model.StackDecoder, 2, true, "k"), 1 / math.Sqrt(float64(d)), false},
		{model.SwitchExpertName(model.StackDecoder, 1, 3, "wo"), 3 / math.Sqrt(64), false},
		{model.SwitchFFLayerNormName(model.StackEncoder, 2), 1 / math.Sqrt(12), true},
	}
	for _, tt := range tests {
		v, err := c.Float32(tt.give)
		if err != nil {
			t.Fatal(err)
		}
		mean, std, lo, hi := stats(v)
		tol := 0.15 * tt.wantStd
		if len(v) < 500 {
			tol = 0.3 * tt.wantStd
		}
		if math.Abs(std-tt.wantStd) > tol || math.Abs(mean-(map[bool]float64{true: 1}[tt.uniform])) > 4*tt.wantStd/math.Sqrt(float64(len(v))) {
			t.Errorf("%s: mean %.4f std %.4f, want std %.4f", tt.give, mean, std, tt.wantStd)
		}
		if tt.uniform && (lo < 0.5 || hi > 1.5) {
			t.Errorf("%s: values in [%v, %v], want within [0.5, 1.5]", tt.give, lo, hi)
		}
	}
	// Route every vocabulary embedding (RMS-normed, times the FF norm) through block 1's router.
	emb, _ := c.Float32(model.SwitchSharedName, 2000, d)
	norm, _ := c.Float32(model.SwitchFFLayerNormName(model.StackEncoder, 1), d)
	router, _ := c.Float32(model.SwitchRouterName(model.StackEncoder, 1), 8, d)
	counts := make([]int, 8)
	for tok := range 2000 {
		x := emb[tok*d : (tok+1)*d]
		var ss float64
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		r := 1 / math.Sqrt(ss/float64(d)+1e-6)
		best, bestLogit := 0, math.Inf(-1)
		for e := range 8 {
			var l float64
			for i := range d {
				l += float64(x[i]) * r * float64(norm[i]) * float64(router[e*d+i])
			}
			if l > bestLogit {
				best, bestLogit = e, l
			}
		}
		counts[best]++
	}
	for e, n := range counts {
		if n < 2000/8/3 {
			t.Errorf("expert %d gets %d of 2000 tokens: routing is degenerate (%v)", e, n, counts)
		}
	}
}

// A failure while writing stops the pipeline without leaking goroutines or leaving files behind.
func TestWriteErrorCleansUp(t *testing.T) {
	defer goleak.VerifyNone(t)
	out := t.TempDir()
	// A directory where the second shard's temporary file must go makes its creation fail.
	blocker := filepath.Join(out, "model-00002-of-00004.safetensors.tmp")
	if err := os.Mkdir(blocker, 0o755); err != nil {
		t.Fatal(err)
	}
	o := tinyMixtral(out)
	o.DType, o.MaxShardBytes = model.BF16, 40_000 // four shards, as in TestWriteOpensAndValidates
	err := write(o, nil, 2)
	if err == nil || !strings.Contains(err.Error(), blocker) {
		t.Fatalf("error = %v, want it to name %s", err, blocker)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if name := e.Name(); name != "model-00001-of-00004.safetensors" && name != filepath.Base(blocker) {
			t.Errorf("unexpected file %s after a failed write", name)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "config.json")); !os.IsNotExist(err) {
		t.Error("config.json written although the weights failed")
	}
}

// TestWriteWithTokenizer: --tokenizer copies the tokenizer files, and the config takes the
// tokenizer's vocabulary size and special ids, so the written directory loads as model and
// tokenizer together.
func TestWriteWithTokenizer(t *testing.T) {
	tokDir := t.TempDir()
	spm, err := os.ReadFile("../tokenizer/testdata/unigram/spiece.model")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokDir, "spiece.model"), spm, 0o644); err != nil {
		t.Fatal(err)
	}
	// T5's conventions on a 1000-piece model: pad and EOS from the config, 4 sentinels on top.
	cfgJSON := `{"eos_token": "</s>", "pad_token": "<pad>", "extra_ids": 4, "add_bos_token": false, "add_eos_token": true}`
	if err := os.WriteFile(filepath.Join(tokDir, "tokenizer_config.json"), []byte(cfgJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		give Options
	}{
		{"switch", tinySwitch("")},
		{"mixtral", tinyMixtral("")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.give
			opts.Out, opts.Tokenizer = t.TempDir(), tokDir
			if _, err := Config(opts); !errors.Is(err, ErrOptions) {
				t.Fatalf("Vocab 300 < 1005 ids: %v, want ErrOptions", err)
			}
			opts.Vocab = 0
			if err := Write(opts, nil); err != nil {
				t.Fatal(err)
			}
			files := dirFiles(t, opts.Out)
			if !bytes.Equal(files["spiece.model"], spm) || string(files["tokenizer_config.json"]) != cfgJSON {
				t.Errorf("tokenizer files not copied: %v", slices.Sorted(maps.Keys(files)))
			}
			tok, err := tokenizer.Load(opts.Out)
			if err != nil {
				t.Fatal(err)
			}
			c, err := model.OpenCheckpoint(opts.Out)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			cfg := c.Config()
			if s := cfg.Switch; s != nil {
				// The preset's vocabulary already holds the tokenizer's 1005 ids.
				if s.VocabSize < tok.VocabSize() || s.EOSTokenID != tok.EOS() || s.PadTokenID != tok.Pad() || s.DecoderStartTokenID != tok.Pad() {
					t.Errorf("switch config %+v, tokenizer eos %d pad %d", s, tok.EOS(), tok.Pad())
				}
			}
			if m := cfg.Mixtral; m != nil {
				if m.VocabSize < tok.VocabSize() || m.BOSTokenID != tok.BOS() || m.EOSTokenID != tok.EOS() || m.PadTokenID != tok.Pad() {
					t.Errorf("mixtral config %+v, tokenizer vocab %d bos %d eos %d pad %d", m, tok.VocabSize(), tok.BOS(), tok.EOS(), tok.Pad())
				}
			}
		})
	}
}

// A tokenizer larger than the preset's vocabulary grows vocab_size to it.
func TestConfigGrowsVocabToTokenizer(t *testing.T) {
	tokDir := t.TempDir()
	b, err := os.ReadFile("../tokenizer/testdata/mistral/tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokDir, "tokenizer.model"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokDir, "tokenizer_config.json"), []byte(`{"additional_special_tokens": ["[TOOL]", "[/TOOL]"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := tinyMixtral("")
	opts.Vocab, opts.Tokenizer = 0, tokDir
	cfg, err := Config(opts)
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Mixtral; m.VocabSize != 32002 || m.BOSTokenID != 1 || m.EOSTokenID != 2 || m.PadTokenID != -1 {
		t.Errorf("vocab %d bos %d eos %d pad %d, want 32002 1 2 -1", m.VocabSize, m.BOSTokenID, m.EOSTokenID, m.PadTokenID)
	}
}
