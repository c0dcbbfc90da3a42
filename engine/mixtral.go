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
	be      compute.Backend
	embed   Weight
	norm    compute.Tensor
	lmHead  Weight
	layers  []mixtralLayer
	moe     moeRunner
	info    Info
	invFreq []float32
	owned   owned
}

type mixtralLayer struct {
	ln1, ln2   compute.Tensor
	q, k, v, o Weight
	block      moeBlock
}

// LoadMixtral builds a Mixtral from its checkpoint.
func LoadMixtral(ckpt *model.Checkpoint, be compute.Backend, opts Options) (*Mixtral, error) {
	cfg := ckpt.Config().Mixtral
	if cfg == nil {
		return nil, fmt.Errorf("%w: %s is not a Mixtral checkpoint", ErrUnsupported, ckpt.Dir())
	}
	d, hd := cfg.HiddenSize, cfg.HeadDim
	gate := routing.Gate{TopK: cfg.NumExpertsPerTok, Renormalize: true}
	if err := gate.Validate(cfg.NumLocalExperts); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnsupported, ckpt.Dir(), err)
	}
	m := &Mixtral{cfg: cfg, be: be}
	l := weightLoader{ckpt: ckpt, be: be}
	m.embed = l.matrix(model.MixtralEmbedName, cfg.VocabSize, d)
	m.norm = l.vector(model.MixtralNormName, d)
	m.lmHead = l.matrix(model.MixtralLMHeadName, cfg.VocabSize, d)
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
		l.free()
		return nil, l.err
	}
	m.owned.weights = l.consts
	experts := opts.Experts
	if experts == nil {
		m.owned.local = NewLocalExperts(ckpt, be, model.ExpertNames(ckpt.Config()), numExperts, d, cfg.IntermediateSize)
		experts = m.owned.local
	}
	for i := 0; i+1 < len(m.layers); i++ {
		m.layers[i].block.succ = &m.layers[i+1].block
	}
	m.moe = moeRunner{be: be, experts: experts, tracer: opts.Tracer, speculate: opts.Speculate, act: actSiLUGated, d: d}
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

// Close frees the model's weights on its backend (on the CPU they are views of the checkpoint, which
// the caller owns) and the experts it loaded itself. It is idempotent; the model must not be used
// afterwards.
func (m *Mixtral) Close() error {
	m.owned.free(m.be)
	return nil
}

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
			width: m.cfg.NumKeyValueHeads * m.cfg.HeadDim, be: m.be}
	}
	return seqs, nil
}

// Step runs the pending tokens of every sequence, packed into one activation matrix.
func (m *Mixtral) Step(ctx context.Context, seqs []*Sequence, all bool) ([][]float32, error) {
	cfg := m.cfg
	d, hd := cfg.HiddenSize, cfg.HeadDim
	qd, kd := cfg.NumAttentionHeads*hd, cfg.NumKeyValueHeads*hd
	for _, s := range seqs {
		if s.err != nil {
			return nil, s.err
		}
	}
	tokens, seqLens, err := pack(seqs, cfg.VocabSize, cfg.MaxPositionEmbeddings)
	if err != nil {
		return nil, err
	}
	be := m.be
	sc := scratch{be: be}
	defer sc.free()
	x, err := embed(&sc, m.embed, seqs, tokens)
	if err != nil {
		return nil, err
	}
	xn := sc.f32(tokens * d)
	q, k, v, attnOut := sc.f32(tokens*qd), sc.f32(tokens*kd), sc.f32(tokens*kd), sc.f32(tokens*qd)
	cosT, sinT := sc.f32(tokens*hd/2), sc.f32(tokens*hd/2)
	if sc.err != nil {
		return nil, sc.err
	}
	cos := make([]float32, tokens*hd/2)
	sin := make([]float32, tokens*hd/2)
	t := 0
	for _, s := range seqs {
		for i := range s.Pending {
			pos := float32(s.n + i)
			for f, inv := range m.invFreq {
				a := pos * inv
				cos[t*hd/2+f] = float32(math.Cos(float64(a)))
				sin[t*hd/2+f] = float32(math.Sin(float64(a)))
			}
			t++
		}
	}
	be.Upload(cosT, cos)
	be.Upload(sinT, sin)
	failed := make([]error, len(seqs))
	for li := range m.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ly := &m.layers[li]
		be.RMSNorm(xn, x, tokens, d, ly.ln1, float32(cfg.RMSNormEps))
		linear(be, q, xn, tokens, ly.q, false)
		linear(be, k, xn, tokens, ly.k, false)
		linear(be, v, xn, tokens, ly.v, false)
		be.RoPE(q, tokens, cfg.NumAttentionHeads, hd, cosT, sinT)
		be.RoPE(k, tokens, cfg.NumKeyValueHeads, hd, cosT, sinT)
		t := 0
		for si, s := range seqs {
			n := seqLens[si]
			c := &s.kv[li]
			if err := c.append(be, k.Rows(t, t+n, kd), v.Rows(t, t+n, kd)); err != nil {
				return nil, err
			}
			a := compute.Attention{Heads: cfg.NumAttentionHeads, KVHeads: cfg.NumKeyValueHeads, HeadDim: hd,
				Scale: float32(1 / math.Sqrt(float64(hd))), Causal: true, Past: s.n, Window: cfg.SlidingWindow}
			be.Attention(attnOut.Rows(t, t+n, qd), q.Rows(t, t+n, qd), c.k.View(0, c.used), c.v.View(0, c.used), n, s.n+n, &a)
			t += n
		}
		linear(be, x, attnOut, tokens, ly.o, true)
		be.RMSNorm(xn, x, tokens, d, ly.ln2, float32(cfg.RMSNormEps))
		if _, err := m.moe.run(ctx, &ly.block, xn, x, tokens, seqLens, nil, failed); err != nil {
			return nil, err
		}
	}
	if len(m.layers) > 0 {
		first := &m.layers[0]
		err := m.moe.predictNextStep(&first.block, x, seqLens, func(t compute.Tensor, n int) {
			be.RMSNorm(t, t, n, d, first.ln2, float32(cfg.RMSNormEps))
		})
		if err != nil {
			return nil, err
		}
	}
	logits, err := finish(be, seqs, seqLens, x, d, all, func(dst, rows compute.Tensor, n int) {
		be.RMSNorm(rows, rows, n, d, m.norm, float32(cfg.RMSNormEps))
		linear(be, dst, rows, n, m.lmHead, false)
	}, cfg.VocabSize)
	if err != nil {
		return nil, err
	}
	return logits, sequenceErrors(failed)
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
// head, which maps rows [n × d] (it may overwrite them) to logits [n × vocab], and downloads them.
func finish(be compute.Backend, seqs []*Sequence, seqLens []int, x compute.Tensor, d int, all bool, head func(dst, rows compute.Tensor, n int), vocab int) ([][]float32, error) {
	sc := scratch{be: be}
	defer sc.free()
	rows := x
	if !all {
		rows = sc.f32(len(seqs) * d)
		if sc.err != nil {
			return nil, sc.err
		}
		be.GatherRows(rows, x, lastRows(seqLens), d)
	}
	n := rows.Len() / d
	lt := sc.f32(n * vocab)
	if sc.err != nil {
		return nil, sc.err
	}
	head(lt, rows, n)
	logits := make([]float32, n*vocab)
	if err := be.Download(logits, lt); err != nil {
		return nil, err
	}
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
	return out, nil
}
