package engine

import (
	"context"
	"fmt"
	"math"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// Mixtral is MixtralForCausalLM: pre-norm decoder layers of GQA attention with RoPE and a
// top-k MoE of SwiGLU experts (softmax over all experts → top-k → renormalise).
type Mixtral struct {
	cfg     *model.MixtralConfig
	cpu     *compute.CPU
	embed   Weight
	norm    []float32
	lmHead  Weight
	layers  []mixtralLayer
	moe     moeRunner
	info    Info
	invFreq []float32
}

type mixtralLayer struct {
	ln1, ln2   []float32
	q, k, v, o Weight
	block      moeBlock
}

// LoadMixtral builds a Mixtral from its checkpoint.
func LoadMixtral(ckpt *model.Checkpoint, cpu *compute.CPU, opts Options) (*Mixtral, error) {
	cfg := ckpt.Config().Mixtral
	if cfg == nil {
		return nil, fmt.Errorf("%w: %s is not a Mixtral checkpoint", ErrUnsupported, ckpt.Dir())
	}
	d, hd := cfg.HiddenSize, cfg.HeadDim
	m := &Mixtral{cfg: cfg, cpu: cpu}
	l := weightLoader{ckpt: ckpt}
	m.embed = l.matrix(model.MixtralEmbedName, cfg.VocabSize, d)
	m.norm = l.vector(model.MixtralNormName, d)
	m.lmHead = l.matrix(model.MixtralLMHeadName, cfg.VocabSize, d)
	gate := routing.Gate{TopK: cfg.NumExpertsPerTok, Renormalize: true}
	if err := gate.Validate(cfg.NumLocalExperts); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnsupported, ckpt.Dir(), err)
	}
	numExperts := make([]int, cfg.NumHiddenLayers)
	for i := range cfg.NumHiddenLayers {
		ly := mixtralLayer{
			ln1: l.vector(model.MixtralInputNormName(i), d),
			ln2: l.vector(model.MixtralPostAttnNormName(i), d),
			q:   l.matrix(model.MixtralAttnName(i, "q"), cfg.NumAttentionHeads*hd, d),
			k:   l.matrix(model.MixtralAttnName(i, "k"), cfg.NumKeyValueHeads*hd, d),
			v:   l.matrix(model.MixtralAttnName(i, "v"), cfg.NumKeyValueHeads*hd, d),
			o:   l.matrix(model.MixtralAttnName(i, "o"), d, cfg.NumAttentionHeads*hd),
			block: moeBlock{
				index: i, next: -1, gate: gate, numExperts: cfg.NumLocalExperts,
				router: l.matrix(model.MixtralGateName(i), cfg.NumLocalExperts, d),
			},
		}
		m.layers = append(m.layers, ly)
		numExperts[i] = cfg.NumLocalExperts
		m.info.MoEBlocks = append(m.info.MoEBlocks, MoEBlock{Name: fmt.Sprintf("model.layers.%d", i), NumExperts: cfg.NumLocalExperts, TopK: cfg.NumExpertsPerTok, PreGateFor: -1})
	}
	if l.err != nil {
		return nil, l.err
	}
	experts := opts.Experts
	if experts == nil {
		experts = NewLocalExperts(ckpt, model.ExpertNames(ckpt.Config()), numExperts, d, cfg.IntermediateSize)
	}
	for i := 0; i+1 < len(m.layers); i++ {
		m.layers[i].block.succ = &m.layers[i+1].block
	}
	m.moe = moeRunner{cpu: cpu, experts: experts, tracer: opts.Tracer, speculate: opts.Speculate, act: actSiLUGated, d: d}
	m.info.Arch = "mixtral"
	m.info.VocabSize = cfg.VocabSize
	m.info.EOS = cfg.EOSTokenIDs
	if len(m.info.EOS) == 0 {
		m.info.EOS = []int{cfg.EOSTokenID}
	}
	m.info.DenseBytes = l.bytes
	m.info.CacheBytesPerToken = int64(cfg.NumHiddenLayers) * 2 * int64(cfg.NumKeyValueHeads*hd) * 4
	m.info.ExpertBytes = int64(cfg.NumHiddenLayers*cfg.NumLocalExperts) * 3 * int64(d*cfg.IntermediateSize) * m.embed.elemBytes()
	// inv_freq as HF computes it, in float32: 1 / theta^(2i/head_dim).
	m.invFreq = make([]float32, hd/2)
	for i := range m.invFreq {
		exp := float32(2*i) / float32(hd)
		m.invFreq[i] = 1 / float32(math.Pow(cfg.RopeTheta, float64(exp)))
	}
	return m, nil
}

// Info describes the model.
func (m *Mixtral) Info() Info { return m.info }

// Close releases nothing: weights are views of the checkpoint.
func (m *Mixtral) Close() error { return nil }

// Start makes sequences whose prompts are their first pending tokens.
func (m *Mixtral) Start(ctx context.Context, prompts [][]int) ([]*Sequence, error) {
	seqs := make([]*Sequence, len(prompts))
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("%w: prompt %d is empty", ErrBadInput, i)
		}
		if err := checkIDs(p, m.cfg.VocabSize); err != nil {
			return nil, err
		}
		seqs[i] = &Sequence{Pending: append([]int(nil), p...), kv: make([]kvCache, len(m.layers)),
			width: m.cfg.NumKeyValueHeads * m.cfg.HeadDim}
	}
	return seqs, nil
}

// Step runs the pending tokens of every sequence, packed into one activation matrix.
func (m *Mixtral) Step(ctx context.Context, seqs []*Sequence, all bool) ([][]float32, error) {
	cfg := m.cfg
	d, hd := cfg.HiddenSize, cfg.HeadDim
	qd, kd := cfg.NumAttentionHeads*hd, cfg.NumKeyValueHeads*hd
	tokens, seqLens, err := pack(seqs, cfg.VocabSize, cfg.MaxPositionEmbeddings)
	if err != nil {
		return nil, err
	}
	x := make([]float32, tokens*d)
	cos := make([]float32, tokens*hd/2)
	sin := make([]float32, tokens*hd/2)
	t := 0
	for _, s := range seqs {
		for i, id := range s.Pending {
			m.embed.row(x[t*d:(t+1)*d], id)
			pos := float32(s.n + i)
			for f, inv := range m.invFreq {
				a := pos * inv
				cos[t*hd/2+f] = float32(math.Cos(float64(a)))
				sin[t*hd/2+f] = float32(math.Sin(float64(a)))
			}
			t++
		}
	}
	xn := make([]float32, tokens*d)
	q := make([]float32, tokens*qd)
	k := make([]float32, tokens*kd)
	v := make([]float32, tokens*kd)
	attnOut := make([]float32, tokens*qd)
	failed := make([]error, len(seqs))
	for li := range m.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ly := &m.layers[li]
		compute.RMSNorm(xn, x, tokens, d, ly.ln1, float32(cfg.RMSNormEps))
		linear(m.cpu, q, xn, tokens, ly.q, false)
		linear(m.cpu, k, xn, tokens, ly.k, false)
		linear(m.cpu, v, xn, tokens, ly.v, false)
		rope(q, cos, sin, tokens, cfg.NumAttentionHeads, hd)
		rope(k, cos, sin, tokens, cfg.NumKeyValueHeads, hd)
		t := 0
		for si, s := range seqs {
			n := seqLens[si]
			c := &s.kv[li]
			c.k = append(c.k, k[t*kd:(t+n)*kd]...)
			c.v = append(c.v, v[t*kd:(t+n)*kd]...)
			a := attention{heads: cfg.NumAttentionHeads, kvHeads: cfg.NumKeyValueHeads, headDim: hd,
				scale: float32(1 / math.Sqrt(float64(hd))), causal: true, past: s.n, window: cfg.SlidingWindow}
			a.run(m.cpu, attnOut[t*qd:(t+n)*qd], q[t*qd:(t+n)*qd], c.k, c.v, n, s.n+n)
			t += n
		}
		linear(m.cpu, x, attnOut, tokens, ly.o, true)
		compute.RMSNorm(xn, x, tokens, d, ly.ln2, float32(cfg.RMSNormEps))
		if _, err := m.moe.run(ctx, &ly.block, xn, x, tokens, seqLens, nil, failed); err != nil {
			return nil, err
		}
	}
	if len(m.layers) > 0 {
		first := &m.layers[0]
		m.moe.predictNextStep(&first.block, x, seqLens, func(dst, src []float32, n int) {
			compute.RMSNorm(dst, src, n, d, first.ln2, float32(cfg.RMSNormEps))
		})
	}
	return finish(seqs, seqLens, x, d, all, func(dst, rows []float32, n int) {
		compute.RMSNorm(rows, rows, n, d, m.norm, float32(cfg.RMSNormEps))
		linear(m.cpu, dst, rows, n, m.lmHead, false)
	}, cfg.VocabSize), sequenceErrors(failed)
}

// rope rotates each head of x [tokens × heads·hd] in place (HF rotate_half convention).
func rope(x, cos, sin []float32, tokens, heads, hd int) {
	half := hd / 2
	for t := range tokens {
		c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
		for h := range heads {
			v := x[(t*heads+h)*hd : (t*heads+h+1)*hd]
			for i := range half {
				x1, x2 := v[i], v[i+half]
				v[i] = x1*c[i] - x2*s[i]
				v[i+half] = x2*c[i] + x1*s[i]
			}
		}
	}
}

// pack checks the pending tokens of seqs and returns their total and per-sequence counts.
func pack(seqs []*Sequence, vocab, maxPos int) (int, []int, error) {
	tokens := 0
	lens := make([]int, len(seqs))
	for i, s := range seqs {
		if len(s.Pending) == 0 {
			return 0, nil, fmt.Errorf("%w: sequence %d has no pending tokens", ErrBadInput, i)
		}
		if err := checkIDs(s.Pending, vocab); err != nil {
			return 0, nil, err
		}
		if maxPos > 0 && s.n+len(s.Pending) > maxPos {
			return 0, nil, fmt.Errorf("%w: sequence %d would be %d tokens, more than the model's %d positions", ErrBadInput, i, s.n+len(s.Pending), maxPos)
		}
		lens[i] = len(s.Pending)
		tokens += lens[i]
	}
	return tokens, lens, nil
}

// finish advances every sequence past its pending tokens and computes the requested logits with
// head, which maps rows [n × d] (it may overwrite them) to logits [n × vocab].
func finish(seqs []*Sequence, seqLens []int, x []float32, d int, all bool, head func(dst, rows []float32, n int), vocab int) [][]float32 {
	var rows []float32
	if all {
		rows = x
	} else {
		rows = make([]float32, len(seqs)*d)
		t := 0
		for i, n := range seqLens {
			t += n
			copy(rows[i*d:(i+1)*d], x[(t-1)*d:t*d])
		}
	}
	n := len(rows) / d
	logits := make([]float32, n*vocab)
	head(logits, rows, n)
	out := make([][]float32, len(seqs))
	t := 0
	for i, s := range seqs {
		if all {
			out[i] = logits[t*vocab : (t+seqLens[i])*vocab]
			t += seqLens[i]
		} else {
			out[i] = logits[i*vocab : (i+1)*vocab]
		}
		s.n += seqLens[i]
		s.Pending = s.Pending[:0]
	}
	return out
}
