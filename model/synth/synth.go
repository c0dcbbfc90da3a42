// Package synth owns synthetic checkpoint generation: it writes HF-compatible model directories
// (config.json plus safetensors, sharded when large) with random but numerically sane weights for
// the Switch Transformers and Mixtral presets, so that large models can be benchmarked without
// downloading them. Output is deterministic for a given seed, whatever the parallelism.
package synth

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/pregate/pregate/internal/atomicfile"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
)

// ErrOptions: the options do not describe a model synth can write.
var ErrOptions = errors.New("synth: invalid options")

// DefaultMaxShardBytes is the shard size limit used when Options.MaxShardBytes is 0.
const DefaultMaxShardBytes = 1 << 30

// Options selects what Write generates.
type Options struct {
	Arch   string // "switch" | "mixtral"
	Preset string // see Presets
	Out    string // output directory (created if needed)
	DType  model.DType
	Seed   int64
	// Overrides (0 = keep preset). Layers sets num_layers and num_decoder_layers (switch; sparse
	// counts become layers/2) or num_hidden_layers (mixtral). DModel sets d_model (switch; d_kv
	// becomes d_model/heads) or hidden_size (mixtral; head_dim becomes hidden_size/heads). DFF sets
	// d_ff or intermediate_size. Heads sets num_heads / num_attention_heads. Vocab sets vocab_size.
	Layers, Experts, DModel, DFF int
	Heads, Vocab                 int
	// MaxShardBytes bounds each safetensors file (0 → DefaultMaxShardBytes). One file is written
	// as model.safetensors; more as model-00001-of-0000N.safetensors plus
	// model.safetensors.index.json.
	MaxShardBytes int64
	// PreGates also writes …mlp.pre_gate.weight for every sparse block that has a next sparse
	// block in its stack (switch only).
	PreGates bool
	// Tokenizer, when set, is a checkpoint directory whose tokenizer files (tokenizer.Files) Write
	// copies into Out, so that the synthetic model takes and gives text. The config follows the
	// tokenizer: vocab_size grows to its vocabulary when smaller (an explicit Vocab that small is
	// an error) and the special token ids are its own.
	Tokenizer string
}

// Config returns the validated model config that Write would write for opts.
func Config(opts Options) (*model.Config, error) {
	cfg, arch, ok := preset(opts.Preset)
	if !ok {
		return nil, fmt.Errorf("%w: unknown preset %q (presets: %v)", ErrOptions, opts.Preset, Presets())
	}
	if opts.Arch != "" && opts.Arch != arch {
		return nil, fmt.Errorf("%w: preset %q is a %s model, not %s", ErrOptions, opts.Preset, arch, opts.Arch)
	}
	for _, o := range []struct {
		name string
		v    int
	}{{"layers", opts.Layers}, {"experts", opts.Experts}, {"d-model", opts.DModel}, {"d-ff", opts.DFF}, {"heads", opts.Heads}, {"vocab", opts.Vocab}} {
		if o.v < 0 {
			return nil, fmt.Errorf("%w: %s override %d is negative", ErrOptions, o.name, o.v)
		}
	}
	torchDtype, err := torchDtype(opts.DType)
	if err != nil {
		return nil, err
	}
	if s := cfg.Switch; s != nil {
		s.TorchDtype = torchDtype
		setIf(&s.VocabSize, opts.Vocab)
		setIf(&s.NumExperts, opts.Experts)
		setIf(&s.DFF, opts.DFF)
		if opts.Layers > 0 {
			s.NumLayers, s.NumDecoderLayers = opts.Layers, opts.Layers
			s.NumSparseEncoderLayers, s.NumSparseDecoderLayers = opts.Layers/2, opts.Layers/2
			setSparseSteps(s)
		}
		if opts.Heads > 0 || opts.DModel > 0 {
			setIf(&s.NumHeads, opts.Heads)
			setIf(&s.DModel, opts.DModel)
			if s.DModel%s.NumHeads != 0 {
				return nil, fmt.Errorf("%w: d_model %d is not divisible by %d heads", ErrOptions, s.DModel, s.NumHeads)
			}
			s.DKV = s.DModel / s.NumHeads
		}
	}
	if m := cfg.Mixtral; m != nil {
		if opts.PreGates {
			return nil, fmt.Errorf("%w: pre-gates are only defined for switch models", ErrOptions)
		}
		m.TorchDtype = torchDtype
		setIf(&m.VocabSize, opts.Vocab)
		setIf(&m.NumLocalExperts, opts.Experts)
		setIf(&m.IntermediateSize, opts.DFF)
		setIf(&m.NumHiddenLayers, opts.Layers)
		if opts.Heads > 0 || opts.DModel > 0 {
			setIf(&m.NumAttentionHeads, opts.Heads)
			setIf(&m.HiddenSize, opts.DModel)
			if m.HiddenSize%m.NumAttentionHeads != 0 {
				return nil, fmt.Errorf("%w: hidden size %d is not divisible by %d heads", ErrOptions, m.HiddenSize, m.NumAttentionHeads)
			}
			m.HeadDim = m.HiddenSize / m.NumAttentionHeads
		}
	}
	if opts.Tokenizer != "" {
		if err := fitTokenizer(cfg, opts); err != nil {
			return nil, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: preset %q with these overrides: %w", ErrOptions, opts.Preset, err)
	}
	return cfg, nil
}

// fitTokenizer makes cfg agree with the tokenizer of opts.Tokenizer: a vocabulary that holds every
// id, and its BOS, EOS and pad ids (T5's convention for switch: decoding starts at pad).
func fitTokenizer(cfg *model.Config, opts Options) error {
	tok, err := tokenizer.Load(opts.Tokenizer)
	if err != nil {
		return fmt.Errorf("%w: --tokenizer: %w", ErrOptions, err)
	}
	var vocab *int
	switch {
	case cfg.Switch != nil:
		vocab = &cfg.Switch.VocabSize
	case cfg.Mixtral != nil:
		vocab = &cfg.Mixtral.VocabSize
	default:
		return fmt.Errorf("%w: no architecture config", ErrOptions)
	}
	if *vocab < tok.VocabSize() {
		if opts.Vocab != 0 {
			return fmt.Errorf("%w: vocab %d is smaller than the tokenizer's %d ids", ErrOptions, opts.Vocab, tok.VocabSize())
		}
		*vocab = tok.VocabSize()
	}
	if s := cfg.Switch; s != nil {
		s.EOSTokenID, s.PadTokenID = tok.EOS(), tok.Pad()
		s.DecoderStartTokenID = max(tok.Pad(), 0)
	}
	if m := cfg.Mixtral; m != nil {
		m.BOSTokenID, m.EOSTokenID, m.PadTokenID = tok.BOS(), tok.EOS(), tok.Pad()
		m.EOSTokenIDs = nil
		if tok.EOS() >= 0 {
			m.EOSTokenIDs = []int{tok.EOS()}
		}
	}
	return nil
}

func setIf(dst *int, v int) {
	if v > 0 {
		*dst = v
	}
}

func torchDtype(dt model.DType) (string, error) {
	switch dt {
	case model.F32, "":
		return "float32", nil
	case model.BF16:
		return "bfloat16", nil
	case model.F16:
		return "float16", nil
	}
	return "", fmt.Errorf("%w: dtype %q (F32, BF16 or F16)", ErrOptions, string(dt))
}

// Write generates the model described by opts into opts.Out: config.json and the weights. Each
// file is written to a temporary name and renamed when complete; files of the other layout
// (single file vs shards) left by an earlier run are removed at the end. progress, if not nil,
// is called from the calling goroutine with the tensor bytes written so far and the total.
func Write(opts Options, progress func(done, total int64)) error {
	return write(opts, progress, runtime.GOMAXPROCS(0))
}

// chunkElems is the number of elements generated per job; each chunk has its own random stream,
// so output does not depend on how chunks are scheduled.
const chunkElems = 1 << 20

type shard struct {
	file    string
	tensors []model.TensorSpec
}

func write(opts Options, progress func(done, total int64), workers int) error {
	cfg, err := Config(opts)
	if err != nil {
		return err
	}
	if opts.Out == "" {
		return fmt.Errorf("%w: no output directory", ErrOptions)
	}
	dt := opts.DType
	if dt == "" {
		dt = model.F32
	}
	maxShard := opts.MaxShardBytes
	if maxShard <= 0 {
		maxShard = DefaultMaxShardBytes
	}
	specs, err := model.ExpectedTensors(cfg, opts.PreGates)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	cfgJSON, err := marshalConfig(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}

	shards, total := planShards(specs, dt, maxShard)
	if progress == nil {
		progress = func(int64, int64) {}
	}
	progress(0, total)
	g := &generator{cfg: cfg, dt: dt, seed: uint64(opts.Seed)}
	if err := g.run(opts.Out, shards, workers, func(done int64) { progress(done, total) }); err != nil {
		return err
	}
	if len(shards) > 1 {
		if err := writeIndex(opts.Out, shards, dt, total); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(opts.Out, model.ConfigFileName), cfgJSON); err != nil {
		return err
	}
	if err := writeTokenizer(opts); err != nil {
		return err
	}
	return removeStale(opts.Out, shards)
}

// writeTokenizer copies the tokenizer files of opts.Tokenizer into opts.Out.
func writeTokenizer(opts Options) error {
	if opts.Tokenizer == "" {
		return nil
	}
	files, err := tokenizer.Files(opts.Tokenizer)
	if err != nil {
		return fmt.Errorf("%w: --tokenizer: %w", ErrOptions, err)
	}
	for name, b := range files {
		if err := atomicfile.WriteFile(filepath.Join(opts.Out, name), b); err != nil {
			return err
		}
	}
	return nil
}

// planShards splits the tensors (in module order) into files of at most maxShard bytes (a tensor
// larger than maxShard gets a file of its own), like HF's shard_checkpoint. Within a file tensors
// are sorted by name, as the safetensors library writes them.
func planShards(specs []model.TensorSpec, dt model.DType, maxShard int64) ([]shard, int64) {
	var shards []shard
	var cur shard
	var curBytes, total int64
	for _, s := range specs {
		n := specBytes(s, dt)
		total += n
		if len(cur.tensors) > 0 && curBytes+n > maxShard {
			shards = append(shards, cur)
			cur, curBytes = shard{}, 0
		}
		cur.tensors = append(cur.tensors, s)
		curBytes += n
	}
	shards = append(shards, cur)
	for i := range shards {
		slices.SortFunc(shards[i].tensors, func(a, b model.TensorSpec) int {
			if a.Name < b.Name {
				return -1
			}
			return 1
		})
		if len(shards) == 1 {
			shards[i].file = model.SafetensorsFileName
		} else {
			shards[i].file = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		}
	}
	return shards, total
}

func specBytes(s model.TensorSpec, dt model.DType) int64 {
	n := int64(dt.Size())
	for _, d := range s.Shape {
		n *= int64(d)
	}
	return n
}

func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// distribution is how one tensor's values are drawn: N(0, std²) or U(lo, hi).
type distribution struct {
	uniform bool
	std     float64
	lo, hi  float64
}

// distributionFor mirrors the fixtures' recipes. Switch: HF's Mesh-TF init with the fixture tweaks
// (q ×2, o ×3, wo ×3, shared ×0.5, relative bias N(0, 0.5²), norms U(0.5, 1.5), routers and
// pre-gates N(0, (2/√d)²)). Mixtral: embeddings N(0, 1), norms U(0.5, 1.5), gates N(0, (2/√h)²),
// every other matrix N(0, 1/fan_in).
func distributionFor(cfg *model.Config, s model.TensorSpec) distribution {
	normal := func(std float64) distribution { return distribution{std: std} }
	switch s.Kind {
	case model.KindNorm:
		return distribution{uniform: true, lo: 0.5, hi: 1.5}
	case model.KindRouter, model.KindPreGate:
		return normal(2 / math.Sqrt(float64(s.Shape[1])))
	case model.KindRelativeBias:
		return normal(0.5)
	}
	if c := cfg.Switch; c != nil {
		d, inner, ff := float64(c.DModel), float64(c.NumHeads*c.DKV), float64(c.DFF)
		switch {
		case s.Name == model.SwitchSharedName:
			return normal(0.5)
		case s.Kind == model.KindEmbedding: // untied lm_head
			return normal(1 / math.Sqrt(d))
		case strings.HasSuffix(s.Name, ".q.weight"):
			return normal(2 / math.Sqrt(d*float64(c.DKV)))
		case strings.HasSuffix(s.Name, ".k.weight"), strings.HasSuffix(s.Name, ".v.weight"), strings.HasSuffix(s.Name, ".wi.weight"):
			return normal(1 / math.Sqrt(d))
		case strings.HasSuffix(s.Name, ".o.weight"):
			return normal(3 / math.Sqrt(inner))
		case strings.HasSuffix(s.Name, ".wo.weight"):
			return normal(3 / math.Sqrt(ff))
		}
	}
	if s.Name == model.MixtralEmbedName {
		return normal(1)
	}
	return normal(1 / math.Sqrt(float64(s.Shape[len(s.Shape)-1]))) // fan_in
}

type generator struct {
	cfg  *model.Config
	dt   model.DType
	seed uint64
}

type job struct {
	file   int // shard index
	spec   model.TensorSpec
	dist   distribution
	stream uint64 // random stream of this chunk
	n      int    // elements
	buf    []byte
	done   chan struct{}
}

// fill draws the chunk's values and encodes them into j.buf.
func (g *generator) fill(j *job, scratch []float32) {
	rng := rand.New(rand.NewPCG(g.seed, j.stream))
	vals := scratch[:j.n]
	if j.dist.uniform {
		w := j.dist.hi - j.dist.lo
		for i := range vals {
			vals[i] = float32(j.dist.lo + w*rng.Float64())
		}
	} else {
		for i := range vals {
			vals[i] = float32(j.dist.std * rng.NormFloat64())
		}
	}
	_ = model.FromFloat32(j.buf, vals, g.dt) // sizes match by construction
}

// run generates and writes every shard, overlapping generation (workers goroutines) with I/O.
func (g *generator) run(dir string, shards []shard, workers int, progress func(done int64)) error {
	workers = max(workers, 1)
	window := 2 * workers
	elemSize := g.dt.Size()
	pool := sync.Pool{New: func() any { b := make([]byte, chunkElems*elemSize); return &b }}

	quit := make(chan struct{})
	work := make(chan *job)
	ordered := make(chan *job, window)
	var wg sync.WaitGroup

	wg.Add(1)
	go func() { // dispatcher: jobs in file order, at most window in flight
		defer wg.Done()
		defer close(work)
		defer close(ordered)
		for fi, sh := range shards {
			for _, spec := range sh.tensors {
				h := fnv.New64a()
				_, _ = h.Write([]byte(spec.Name))
				base := h.Sum64()
				dist := distributionFor(g.cfg, spec)
				total := numElements(spec.Shape)
				for c, start := uint64(0), 0; start < total; c, start = c+1, start+chunkElems {
					n := min(chunkElems, total-start)
					j := &job{file: fi, spec: spec, dist: dist, stream: base ^ (c+1)*0x9E3779B97F4A7C15, n: n,
						buf: (*pool.Get().(*[]byte))[:n*elemSize], done: make(chan struct{})}
					select {
					case ordered <- j:
					case <-quit:
						return
					}
					select {
					case work <- j:
					case <-quit:
						return
					}
				}
			}
		}
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scratch := make([]float32, chunkElems)
			for j := range work {
				g.fill(j, scratch)
				close(j.done)
			}
		}()
	}

	err := g.consume(dir, shards, ordered, &pool, progress)
	close(quit)
	for range ordered { // unblock the dispatcher
	}
	wg.Wait()
	return err
}

// consume writes finished jobs in order, opening and closing shard files as it goes.
func (g *generator) consume(dir string, shards []shard, ordered <-chan *job, pool *sync.Pool, progress func(int64)) error {
	var (
		w    *model.SafetensorsWriter
		cur  = -1
		done int64
	)
	open := func(fi int) error {
		infos := make([]model.TensorInfo, len(shards[fi].tensors))
		for i, s := range shards[fi].tensors {
			infos[i] = model.TensorInfo{Name: s.Name, DType: g.dt, Shape: s.Shape}
		}
		var err error
		w, err = model.CreateSafetensors(filepath.Join(dir, shards[fi].file), infos, map[string]string{"format": "pt"})
		cur = fi
		return err
	}
	// Tensors with no elements produce no jobs, so a shard may need opening without one.
	advance := func(to int) error {
		for cur < to {
			if w != nil {
				if err := w.Close(); err != nil {
					return err
				}
				w = nil
			}
			if err := open(cur + 1); err != nil {
				return err
			}
		}
		return nil
	}
	for j := range ordered {
		<-j.done
		if err := advance(j.file); err != nil {
			return g.fail(w, err)
		}
		if _, err := w.Write(j.buf); err != nil {
			return g.fail(w, err)
		}
		done += int64(len(j.buf))
		b := j.buf[:cap(j.buf)]
		pool.Put(&b)
		progress(done)
	}
	if err := advance(len(shards) - 1); err != nil {
		return g.fail(w, err)
	}
	if err := w.Close(); err != nil {
		return err
	}
	return nil
}

func (g *generator) fail(w *model.SafetensorsWriter, err error) error {
	if w != nil {
		_ = w.Close() // removes the incomplete temporary file
	}
	return err
}

// writeIndex writes model.safetensors.index.json as HF does (indent 2, sorted keys).
func writeIndex(dir string, shards []shard, dt model.DType, total int64) error {
	weightMap := map[string]any{}
	for _, sh := range shards {
		for _, s := range sh.tensors {
			weightMap[s.Name] = sh.file
		}
	}
	index := map[string]any{
		"metadata":   map[string]any{"total_size": total},
		"weight_map": weightMap,
	}
	var buf bytes.Buffer
	if err := writeJSON(&buf, index, 0); err != nil {
		return err
	}
	buf.WriteByte('\n')
	return atomicfile.WriteFile(filepath.Join(dir, model.IndexFileName), buf.Bytes())
}

// removeStale deletes weight files of an earlier run that this run did not write.
func removeStale(dir string, shards []shard) error {
	keep := map[string]bool{}
	for _, sh := range shards {
		keep[sh.file] = true
	}
	if len(shards) > 1 {
		keep[model.IndexFileName] = true
	}
	candidates, _ := filepath.Glob(filepath.Join(dir, "model-*-of-*.safetensors"))
	candidates = append(candidates, filepath.Join(dir, model.SafetensorsFileName), filepath.Join(dir, model.IndexFileName))
	for _, p := range candidates {
		if keep[filepath.Base(p)] {
			continue
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("synth: remove stale %s: %w", p, err)
		}
	}
	return nil
}
