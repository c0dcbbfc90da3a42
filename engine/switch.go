package engine

import (
	"context"
	"fmt"
	"math"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// Switch is SwitchTransformersForConditionalGeneration: a T5 encoder-decoder (RMSNorm, relative
// position bias computed in block 0 and reused, no 1/√d attention scaling) whose every
// sparse_step-th block has a top-1 MoE of ReLU experts scaled by the router probability.
type Switch struct {
	cfg      *model.SwitchConfig
	be       compute.Backend
	sc       *scratch // the step's activations
	shared   Weight   // embeddings and, tied, the LM head
	lmHead   Weight
	enc, dec switchStack
	moe      moeRunner
	info     Info
	owned    owned
}

type switchStack struct {
	decoder bool
	relBias []float32      // [buckets × heads] of block 0
	bias    compute.Tensor // [2·reach+1 × heads]: the bias of each relative position in [-reach, reach]
	reach   int
	blocks  []switchBlock
	final   compute.Tensor
}

type switchAttn struct{ q, k, v, o Weight }

type switchBlock struct {
	lnSelf, lnCross, lnFF compute.Tensor
	self, cross           switchAttn
	wi, wo                Weight    // dense FF
	moe                   *moeBlock // sparse FF, nil for dense
}

// denseFF adds the dense feed-forward of xn's n rows to x (ReLU(xn·wiᵀ)·woᵀ), through h [n × d_ff].
func (b *switchBlock) denseFF(be compute.Backend, x, xn, h compute.Tensor, n int) {
	linear(be, h, xn, n, b.wi, false)
	be.ReLU(h)
	linear(be, x, h, n, b.wo, true)
}

// encoderOut is what the decoder needs of a sequence's encoder pass.
type encoderOut struct {
	hidden compute.Tensor // [n × d], after the encoder's final norm
	mask   compute.Tensor // [n] additive key mask: 0 for a valid key, compute.MaskValue for padding
	masked bool           // some key is padding (else mask is not applied)
	crossK []kvCache      // per decoder block: cross-attention keys and values
}

// free frees the encoder output's tensors.
func (e *encoderOut) free(be compute.Backend) {
	be.Free(e.hidden)
	be.Free(e.mask)
	for i := range e.crossK {
		e.crossK[i].free(be)
	}
}

// LoadSwitch builds a Switch Transformer from its checkpoint.
func LoadSwitch(ckpt *model.Checkpoint, be compute.Backend, opts Options) (*Switch, error) {
	cfg := ckpt.Config().Switch
	if cfg == nil {
		return nil, fmt.Errorf("%w: %s is not a Switch Transformers checkpoint", ErrUnsupported, ckpt.Dir())
	}
	d, inner := cfg.DModel, cfg.NumHeads*cfg.DKV
	gate := routing.Gate{TopK: 1, Capacity: cfg.ExpertCapacity}
	if err := gate.Validate(cfg.NumExperts); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnsupported, ckpt.Dir(), err)
	}
	m := &Switch{cfg: cfg, be: be, sc: &scratch{be: be}}
	l := weightLoader{ckpt: ckpt, be: be}
	m.shared = l.matrix(model.SwitchSharedName, cfg.VocabSize, d)
	m.lmHead = l.matrix(model.SwitchLMHeadName, cfg.VocabSize, d)
	var numExperts []int
	preGates := 0
	loadStack := func(stack string, n int, decoder bool) switchStack {
		s := switchStack{decoder: decoder}
		attn := func(i int, cross bool) switchAttn {
			name := func(p string) string { return model.SwitchAttnName(stack, i, cross, p) }
			return switchAttn{q: l.matrix(name("q"), inner, d), k: l.matrix(name("k"), inner, d),
				v: l.matrix(name("v"), inner, d), o: l.matrix(name("o"), d, inner)}
		}
		s.relBias = l.table(model.SwitchRelativeBiasName(stack), cfg.RelativeAttentionNumBuckets, cfg.NumHeads)
		var prev *moeBlock
		for i := range n {
			b := switchBlock{lnSelf: l.vector(model.SwitchLayerNormName(stack, i, 0), d), self: attn(i, false)}
			if decoder {
				b.lnCross = l.vector(model.SwitchLayerNormName(stack, i, 1), d)
				b.cross = attn(i, true)
			}
			b.lnFF = l.vector(model.SwitchFFLayerNormName(stack, i), d)
			if cfg.IsSparse(i, decoder) {
				idx := len(numExperts)
				b.moe = &moeBlock{index: idx, next: -1, gate: gate, numExperts: cfg.NumExperts,
					router:  l.matrix(model.SwitchRouterName(stack, i), cfg.NumExperts, d),
					preGate: l.optional(model.SwitchPreGateName(stack, i), cfg.NumExperts, d)}
				if !b.moe.preGate.IsZero() {
					preGates++
				}
				if prev != nil {
					prev.next = idx
					prev.succ = b.moe
				}
				prev = b.moe
				numExperts = append(numExperts, cfg.NumExperts)
				m.info.MoEBlocks = append(m.info.MoEBlocks, MoEBlock{Name: fmt.Sprintf("%s.block.%d", stack, i), NumExperts: cfg.NumExperts, TopK: 1, PreGateFor: -1})
			} else {
				b.wi = l.matrix(model.SwitchDenseName(stack, i, "wi"), cfg.DFF, d)
				b.wo = l.matrix(model.SwitchDenseName(stack, i, "wo"), d, cfg.DFF)
			}
			s.blocks = append(s.blocks, b)
		}
		s.final = l.vector(stack+".final_layer_norm.weight", d)
		return s
	}
	m.enc = loadStack(model.StackEncoder, cfg.NumLayers, false)
	m.dec = loadStack(model.StackDecoder, cfg.NumDecoderLayers, true)
	for _, st := range []*switchStack{&m.enc, &m.dec} {
		buckets, reach := bucketTable(!st.decoder, cfg.RelativeAttentionNumBuckets, cfg.RelativeAttentionMaxDistance)
		if buckets == nil && l.err == nil {
			l.err = fmt.Errorf("%w: %s: relative_attention_max_distance %d does not exceed the exact buckets of %d buckets",
				ErrUnsupported, ckpt.Dir(), cfg.RelativeAttentionMaxDistance, cfg.RelativeAttentionNumBuckets)
		}
		if l.err == nil {
			st.bias, st.reach = l.constF32(relativeBiasTable(st.relBias, buckets, cfg.NumHeads)), reach
		}
	}
	if l.err != nil {
		l.free()
		return nil, l.err
	}
	m.owned.weights = l.consts
	// Pre-gates: either none, or one on every sparse block that has a next sparse block in its stack.
	for _, s := range []*switchStack{&m.enc, &m.dec} {
		for _, b := range s.blocks {
			if b.moe == nil {
				continue
			}
			switch {
			case b.moe.preGate.IsZero() && preGates > 0 && b.moe.next >= 0:
				l.free()
				return nil, fmt.Errorf("%w: %s has pre-gates but none for MoE block %s", ErrUnsupported, ckpt.Dir(), m.info.MoEBlocks[b.moe.index].Name)
			case !b.moe.preGate.IsZero() && b.moe.next < 0:
				l.free()
				return nil, fmt.Errorf("%w: %s: MoE block %s is the last of its stack but has a pre-gate", ErrUnsupported, ckpt.Dir(), m.info.MoEBlocks[b.moe.index].Name)
			case !b.moe.preGate.IsZero():
				m.info.MoEBlocks[b.moe.index].PreGateFor = b.moe.next
			}
		}
	}
	m.info.PreGated = preGates > 0
	experts := opts.Experts
	if experts == nil {
		m.owned.local = NewLocalExperts(ckpt, be, model.ExpertNames(ckpt.Config()), numExperts, d, cfg.DFF)
		experts = m.owned.local
	}
	m.moe = moeRunner{be: be, sc: m.sc, experts: experts, tracer: opts.Tracer, speculate: opts.Speculate, act: actReLU, d: d}
	m.info.Arch = "switch_transformers"
	m.info.VocabSize = cfg.VocabSize
	m.info.EOS = []int{cfg.EOSTokenID}
	m.info.DenseBytes = l.bytes
	m.info.CacheBytesPerToken = int64(cfg.NumDecoderLayers) * 2 * int64(cfg.NumHeads*cfg.DKV) * 4
	m.info.PromptBytesPerToken = int64(cfg.DModel)*4 + 4 + m.info.CacheBytesPerToken // hidden, mask, cross K/V
	m.info.PassBytesPerToken = int64(cfg.DModel)*4 + 2*int64(cfg.NumHeads*cfg.DKV)*4 // the pass's x, k, v
	m.info.ExpertBytes = int64(len(numExperts)*cfg.NumExperts) * 2 * int64(d*cfg.DFF) * m.shared.elemBytes()
	return m, nil
}

// Info describes the model.
func (m *Switch) Info() Info { return m.info }

// Close frees the model's weights on its backend (on the CPU they are views of the checkpoint, which
// the caller owns) and the experts it loaded itself. It is idempotent; the model must not be used
// afterwards.
func (m *Switch) Close() error {
	m.owned.free(m.be)
	return nil
}

// Start encodes the prompts and starts each decoder from decoder_start_token_id.
func (m *Switch) Start(ctx context.Context, prompts [][]int) ([]*Sequence, error) {
	return m.StartMasked(ctx, prompts, nil)
}

// StartMasked is Start for padded encoder inputs: masks (see Encode) hide padding from attention.
func (m *Switch) StartMasked(ctx context.Context, prompts [][]int, masks [][]int) ([]*Sequence, error) {
	j, err := m.beginEncode(prompts, masks)
	if err != nil {
		return nil, err
	}
	defer j.Close()
	if _, err := j.Run(ctx, j.Left()); err != nil {
		return nil, err
	}
	return j.Sequences(), nil
}

// Encode runs the encoder and returns each sequence's final hidden states [len × d]. masks (nil,
// or one per sequence with 1 for real tokens and 0 for padding) mask padding as attention keys,
// exactly as HF's attention_mask does; pad tokens are otherwise embedded, routed and counted.
func (m *Switch) Encode(ctx context.Context, ids [][]int, masks [][]int) ([][]float32, error) {
	outs, err := m.encode(ctx, ids, masks)
	if err != nil {
		return nil, err
	}
	h := make([][]float32, len(outs))
	for i, o := range outs {
		h[i] = make([]float32, o.hidden.Len())
		if err == nil {
			err = m.be.Download(h[i], o.hidden)
		}
		o.free(m.be)
	}
	if err != nil {
		return nil, err
	}
	return h, nil
}

// encode runs a whole encoder pass (one slice per layer) and returns its outputs.
func (m *Switch) encode(ctx context.Context, ids [][]int, masks [][]int) ([]*encoderOut, error) {
	j, err := m.beginEncode(ids, masks)
	if err != nil {
		return nil, err
	}
	defer j.Close()
	if _, err := j.Run(ctx, j.Left()); err != nil {
		return nil, err
	}
	outs := j.outs
	j.outs = nil
	return outs, nil
}

// Step runs the decoder over every sequence's pending tokens.
func (m *Switch) Step(ctx context.Context, seqs []*Sequence, all bool) ([][]float32, error) {
	cfg := m.cfg
	d := cfg.DModel
	for i, s := range seqs {
		if s.enc == nil {
			return nil, fmt.Errorf("%w: sequence %d was not started by this model", ErrBadInput, i)
		}
		if s.err != nil {
			return nil, s.err
		}
	}
	tokens, seqLens, err := pack(seqs, cfg.VocabSize, 0)
	if err != nil {
		return nil, err
	}
	sc := m.sc
	defer sc.release(sc.mark())
	x, err := embed(sc, m.shared, seqs, tokens)
	if err != nil {
		return nil, err
	}
	failed := make([]error, len(seqs))
	if err := m.runStack(ctx, &m.dec, seqs, seqLens, x, tokens, failed); err != nil {
		return nil, err
	}
	if b := m.dec.firstMoE(); b != nil {
		err := m.moe.predictNextStep(b.moe, x, seqLens, func(t compute.Tensor, n int) {
			m.be.RMSNorm(t, t, n, d, b.lnFF, float32(cfg.LayerNormEpsilon))
		})
		if err != nil {
			return nil, err
		}
	}
	scale := float32(math.Pow(float64(d), -0.5))
	logits, err := finish(m.sc, seqs, seqLens, x, d, all, func(dst, rows compute.Tensor, n int) {
		m.be.RMSNorm(rows, rows, n, d, m.dec.final, float32(cfg.LayerNormEpsilon))
		if cfg.TieWordEmbeddings {
			m.be.Scale(rows, scale)
		}
		linear(m.be, dst, rows, n, m.lmHead, false)
	}, cfg.VocabSize)
	if err != nil {
		return nil, err
	}
	return logits, sequenceErrors(failed)
}

// runStack runs the decoder's blocks over x [tokens × d] in place; each sequence's encoder output
// is in seqs[i].enc. (The encoder runs in slices: encodeJob.)
func (m *Switch) runStack(ctx context.Context, st *switchStack, seqs []*Sequence, seqLens []int, x compute.Tensor, tokens int, failed []error) error {
	cfg := m.cfg
	d, inner, heads := cfg.DModel, cfg.NumHeads*cfg.DKV, cfg.NumHeads
	eps := float32(cfg.LayerNormEpsilon)
	be := m.be
	sc := m.sc
	defer sc.release(sc.mark())
	xn, q, k, v, attnOut := sc.f32(tokens*d), sc.f32(tokens*inner), sc.f32(tokens*inner), sc.f32(tokens*inner), sc.f32(tokens*inner)
	var h compute.Tensor
	if st.hasDense() {
		h = sc.f32(tokens * cfg.DFF)
	}
	if sc.err != nil {
		return sc.err
	}
	var routed *preRouted
	for bi := range st.blocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := &st.blocks[bi]
		// Self-attention with the stack's relative position bias.
		be.RMSNorm(xn, x, tokens, d, b.lnSelf, eps)
		linear(be, q, xn, tokens, b.self.q, false)
		linear(be, k, xn, tokens, b.self.k, false)
		linear(be, v, xn, tokens, b.self.v, false)
		t := 0
		for si, s := range seqs {
			n := seqLens[si]
			c := &s.kv[bi]
			if err := c.append(be, k.Rows(t, t+n, inner), v.Rows(t, t+n, inner)); err != nil {
				return err
			}
			a := compute.Attention{Heads: heads, KVHeads: heads, HeadDim: cfg.DKV, Scale: 1, Causal: st.decoder, Past: s.n,
				Bias: st.bias, BiasReach: st.reach}
			be.Attention(attnOut.Rows(t, t+n, inner), q.Rows(t, t+n, inner), c.k.View(0, c.used), c.v.View(0, c.used), n, s.n+n, &a)
			t += n
		}
		linear(be, x, attnOut, tokens, b.self.o, true)
		if st.decoder {
			// Cross-attention: no position bias, encoder padding masked.
			be.RMSNorm(xn, x, tokens, d, b.lnCross, eps)
			linear(be, q, xn, tokens, b.cross.q, false)
			t := 0
			for si, s := range seqs {
				n, e := seqLens[si], s.enc
				a := compute.Attention{Heads: heads, KVHeads: heads, HeadDim: cfg.DKV, Scale: 1}
				if e.masked {
					a.Mask = e.mask
				}
				c := &e.crossK[bi]
				be.Attention(attnOut.Rows(t, t+n, inner), q.Rows(t, t+n, inner), c.k, c.v, n, e.mask.Len(), &a)
				t += n
			}
			linear(be, x, attnOut, tokens, b.cross.o, true)
		}
		// Feed-forward: dense, or a top-1 MoE.
		be.RMSNorm(xn, x, tokens, d, b.lnFF, eps)
		if b.moe == nil {
			b.denseFF(be, x, xn, h, tokens)
			continue
		}
		next, err := m.moe.run(ctx, b.moe, xn, x, tokens, seqLens, routed, failed)
		if err != nil {
			return err
		}
		routed = next
	}
	return nil
}

// hasDense reports whether some block of the stack has a dense feed-forward.
func (st *switchStack) hasDense() bool {
	for i := range st.blocks {
		if st.blocks[i].moe == nil {
			return true
		}
	}
	return false
}

// firstMoE returns the stack's first sparse block (nil if it has none): no pre-gate routes it.
func (st *switchStack) firstMoE() *switchBlock {
	for i := range st.blocks {
		if st.blocks[i].moe != nil {
			return &st.blocks[i]
		}
	}
	return nil
}

// relativeBiasTable expands block 0's position bias relBias [buckets × heads] into the table the
// backend's attention reads: row r holds the bias of relative position r − reach, whose bucket is
// buckets[r] (bucketTable), per head.
func relativeBiasTable(relBias []float32, buckets []int, heads int) []float32 {
	tab := make([]float32, len(buckets)*heads)
	for r, b := range buckets {
		copy(tab[r*heads:(r+1)*heads], relBias[b*heads:(b+1)*heads])
	}
	return tab
}

// bucketTable is relativeBucket of every relative position in [-reach, reach], reach =
// maxDistance: past maxDistance the log branch has reached the last bucket (min caps it), so a
// lookup of the clamped position gives the same bucket without a log per query and key (a third
// of a long prompt's encoder time). Nil when maxDistance is not past the exact buckets (the log
// branch would not be monotonic there: no config does this, but then nothing is assumed).
func bucketTable(bidirectional bool, numBuckets, maxDistance int) ([]int, int) {
	exact := numBuckets / 2
	if bidirectional {
		exact = numBuckets / 4
	}
	if maxDistance <= exact {
		return nil, 0
	}
	tab := make([]int, 2*maxDistance+1)
	for i := range tab {
		tab[i] = relativeBucket(i-maxDistance, bidirectional, numBuckets, maxDistance)
	}
	return tab, maxDistance
}

// relativeBucket is T5's _relative_position_bucket for relative = key − query; the log branch is
// computed in float32 and truncated toward zero, as HF does.
func relativeBucket(relative int, bidirectional bool, numBuckets, maxDistance int) int {
	bucket := 0
	if bidirectional {
		numBuckets /= 2
		if relative > 0 {
			bucket += numBuckets
		}
		relative = max(relative, -relative)
	} else {
		relative = -min(relative, 0)
	}
	maxExact := numBuckets / 2
	if relative < maxExact {
		return bucket + relative
	}
	l := float32(math.Log(float64(float32(relative) / float32(maxExact))))
	large := maxExact + int(l/float32(math.Log(float64(maxDistance)/float64(maxExact)))*float32(numBuckets-maxExact))
	return bucket + min(large, numBuckets-1)
}
