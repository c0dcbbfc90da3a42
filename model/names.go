package model

import (
	"fmt"
	"strconv"
)

// Switch Transformers tensor names (HF SwitchTransformersForConditionalGeneration state_dict).
//
// Stacks are "encoder" and "decoder". In block i of a stack, layer.0 is self-attention; in the
// decoder layer.1 is cross-attention (EncDecAttention); the feed-forward sub-layer is layer.1 in the
// encoder and layer.2 in the decoder. A dense FF has mlp.wi / mlp.wo; a sparse FF has
// mlp.router.classifier, mlp.experts.expert_{e}.wi / .wo and, in pre-gated checkpoints, mlp.pre_gate.
const (
	StackEncoder = "encoder"
	StackDecoder = "decoder"

	SwitchSharedName = "shared.weight"  // token embedding shared by both stacks (and the LM head when tied)
	SwitchLMHeadName = "lm_head.weight" // stored only when tie_word_embeddings is false
)

func stackName(decoder bool) string {
	if decoder {
		return StackDecoder
	}
	return StackEncoder
}

func switchBlock(stack string, block int) string {
	return stack + ".block." + strconv.Itoa(block)
}

// SwitchEmbedName returns "{stack}.embed_tokens.weight" (an alias of shared.weight).
func SwitchEmbedName(stack string) string { return stack + ".embed_tokens.weight" }

// SwitchAttnName returns an attention projection weight; proj is "q", "k", "v" or "o".
// Self-attention: {stack}.block.{i}.layer.0.SelfAttention.{proj}.weight; cross-attention (decoder
// only): decoder.block.{i}.layer.1.EncDecAttention.{proj}.weight.
func SwitchAttnName(stack string, block int, cross bool, proj string) string {
	if cross {
		return switchBlock(stack, block) + ".layer.1.EncDecAttention." + proj + ".weight"
	}
	return switchBlock(stack, block) + ".layer.0.SelfAttention." + proj + ".weight"
}

// SwitchRelativeBiasName returns the stack's relative position bias ([buckets, heads]), owned by
// block 0's self-attention.
func SwitchRelativeBiasName(stack string) string {
	return switchBlock(stack, 0) + ".layer.0.SelfAttention.relative_attention_bias.weight"
}

// SwitchLayerNormName returns {stack}.block.{i}.layer.{sub}.layer_norm.weight.
func SwitchLayerNormName(stack string, block, sub int) string {
	return switchBlock(stack, block) + ".layer." + strconv.Itoa(sub) + ".layer_norm.weight"
}

// SwitchFFSubLayer returns the index of the feed-forward sub-layer: 1 in the encoder, 2 in the decoder.
func SwitchFFSubLayer(stack string) int {
	if stack == StackDecoder {
		return 2
	}
	return 1
}

// SwitchFFLayerNormName returns the layer norm in front of block i's feed-forward sub-layer.
func SwitchFFLayerNormName(stack string, block int) string {
	return SwitchLayerNormName(stack, block, SwitchFFSubLayer(stack))
}

// SwitchFinalLayerNormName returns {stack}.final_layer_norm.weight.
func SwitchFinalLayerNormName(stack string) string { return stack + ".final_layer_norm.weight" }

// SwitchFFPrefix returns the feed-forward sub-layer path of block i: encoder.block.{i}.layer.1 or
// decoder.block.{i}.layer.2. Its tensors are the prefix plus ".layer_norm.weight" and, for a dense
// block, ".mlp.wi.weight" / ".mlp.wo.weight"; for a sparse block ".mlp.router.classifier.weight",
// ".mlp.experts.expert_{e}.wi.weight" / ".wo.weight" and ".mlp.pre_gate.weight". Prefer the
// helpers below to building names by hand.
func SwitchFFPrefix(stack string, block int) string {
	return switchBlock(stack, block) + ".layer." + strconv.Itoa(SwitchFFSubLayer(stack))
}

func switchMLP(stack string, block int) string { return SwitchFFPrefix(stack, block) + ".mlp" }

// SwitchDenseName returns a dense FF weight {prefix}.mlp.{w}.weight; w is "wi" or "wo".
func SwitchDenseName(stack string, block int, w string) string {
	return switchMLP(stack, block) + "." + w + ".weight"
}

// SwitchRouterName returns a sparse block's router weight ([num_experts, d_model]).
func SwitchRouterName(stack string, block int) string {
	return switchMLP(stack, block) + ".router.classifier.weight"
}

// SwitchExpertName returns an expert weight of a sparse block; w is "wi" or "wo".
func SwitchExpertName(stack string, block, expert int, w string) string {
	return switchMLP(stack, block) + ".experts.expert_" + strconv.Itoa(expert) + "." + w + ".weight"
}

// SwitchPreGateName returns a sparse block's pre-gate weight ([num_experts, d_model]), which decides
// the routing of the next sparse block of the same stack.
func SwitchPreGateName(stack string, block int) string {
	return switchMLP(stack, block) + ".pre_gate.weight"
}

// Mixtral tensor names (HF MixtralForCausalLM state_dict, classic block_sparse_moe layout).
const (
	MixtralEmbedName  = "model.embed_tokens.weight"
	MixtralNormName   = "model.norm.weight"
	MixtralLMHeadName = "lm_head.weight"
)

func mixtralLayer(layer int) string { return "model.layers." + strconv.Itoa(layer) }

// MixtralAttnName returns model.layers.{i}.self_attn.{proj}_proj.weight; proj is "q", "k", "v" or "o".
func MixtralAttnName(layer int, proj string) string {
	return mixtralLayer(layer) + ".self_attn." + proj + "_proj.weight"
}

// MixtralInputNormName returns model.layers.{i}.input_layernorm.weight.
func MixtralInputNormName(layer int) string { return mixtralLayer(layer) + ".input_layernorm.weight" }

// MixtralPostAttnNormName returns model.layers.{i}.post_attention_layernorm.weight.
func MixtralPostAttnNormName(layer int) string {
	return mixtralLayer(layer) + ".post_attention_layernorm.weight"
}

// MixtralGateName returns the router weight model.layers.{i}.block_sparse_moe.gate.weight.
func MixtralGateName(layer int) string { return mixtralLayer(layer) + ".block_sparse_moe.gate.weight" }

// MixtralExpertName returns model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight; w is "w1",
// "w2" or "w3" (expert(x) = w2(silu(w1 x) * w3 x)).
func MixtralExpertName(layer, expert int, w string) string {
	return mixtralLayer(layer) + ".block_sparse_moe.experts." + strconv.Itoa(expert) + "." + w + ".weight"
}

// TensorKind says what a tensor is for (and so how it is shaped and initialised).
type TensorKind int

// Tensor kinds.
const (
	KindEmbedding    TensorKind = iota + 1 // [vocab, d_model] token embedding or LM head
	KindLinear                             // [out, in] projection: attention, dense FF, expert
	KindNorm                               // [d_model] RMS norm weight
	KindRouter                             // [num_experts, d_model] router / gate
	KindPreGate                            // [num_experts, d_model] pre-gate (pre-gated Switch)
	KindRelativeBias                       // [buckets, heads] T5 relative position bias
)

// TensorSpec is a tensor an architecture defines, with its shape for a given config.
type TensorSpec struct {
	Name  string
	Shape []int
	Kind  TensorKind
}

// SparseBlocks returns the sparse (MoE) blocks of the encoder or decoder stack, in order.
func (c *SwitchConfig) SparseBlocks(decoder bool) []int {
	var out []int
	for i := range c.NumBlocks(decoder) {
		if c.IsSparse(i, decoder) {
			out = append(out, i)
		}
	}
	return out
}

// PreGateBlocks returns the sparse blocks of a stack that own a pre-gate in a pre-gated checkpoint:
// every sparse block that has a later sparse block in the same stack.
func (c *SwitchConfig) PreGateBlocks(decoder bool) []int {
	s := c.SparseBlocks(decoder)
	if len(s) == 0 {
		return nil
	}
	return s[:len(s)-1]
}

// ExpectedTensors returns every tensor the architecture stores for cfg, in HF module order. Tied
// aliases are not included (Switch stores only shared.weight when tie_word_embeddings is true;
// Mixtral stores lm_head.weight unless tied). With preGates, the Switch pre-gate tensors are
// included too (an error for Mixtral).
func ExpectedTensors(cfg *Config, preGates bool) ([]TensorSpec, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: no config", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Switch != nil {
		return switchTensors(cfg.Switch, preGates), nil
	}
	if preGates {
		return nil, fmt.Errorf("%w: pre-gates for model_type %q", ErrUnsupported, cfg.ModelType)
	}
	return mixtralTensors(cfg.Mixtral), nil
}

func switchTensors(c *SwitchConfig, preGates bool) []TensorSpec {
	d, inner, ff, e := c.DModel, c.NumHeads*c.DKV, c.DFF, c.NumExperts
	specs := []TensorSpec{{SwitchSharedName, []int{c.VocabSize, d}, KindEmbedding}}
	add := func(name string, kind TensorKind, shape ...int) {
		specs = append(specs, TensorSpec{name, shape, kind})
	}
	for _, decoder := range []bool{false, true} {
		stack := stackName(decoder)
		pre := map[int]bool{}
		if preGates {
			for _, b := range c.PreGateBlocks(decoder) {
				pre[b] = true
			}
		}
		for i := range c.NumBlocks(decoder) {
			attn := []bool{false}
			if decoder {
				attn = append(attn, true)
			}
			for sub, cross := range attn {
				for _, p := range []string{"q", "k", "v"} {
					add(SwitchAttnName(stack, i, cross, p), KindLinear, inner, d)
				}
				add(SwitchAttnName(stack, i, cross, "o"), KindLinear, d, inner)
				if i == 0 && !cross {
					add(SwitchRelativeBiasName(stack), KindRelativeBias, c.RelativeAttentionNumBuckets, c.NumHeads)
				}
				add(SwitchLayerNormName(stack, i, sub), KindNorm, d)
			}
			if c.IsSparse(i, decoder) {
				add(SwitchRouterName(stack, i), KindRouter, e, d)
				for x := range e {
					add(SwitchExpertName(stack, i, x, "wi"), KindLinear, ff, d)
					add(SwitchExpertName(stack, i, x, "wo"), KindLinear, d, ff)
				}
				if pre[i] {
					add(SwitchPreGateName(stack, i), KindPreGate, e, d)
				}
			} else {
				add(SwitchDenseName(stack, i, "wi"), KindLinear, ff, d)
				add(SwitchDenseName(stack, i, "wo"), KindLinear, d, ff)
			}
			add(SwitchFFLayerNormName(stack, i), KindNorm, d)
		}
		add(SwitchFinalLayerNormName(stack), KindNorm, d)
	}
	if !c.TieWordEmbeddings {
		add(SwitchLMHeadName, KindEmbedding, c.VocabSize, d)
	}
	return specs
}

func mixtralTensors(c *MixtralConfig) []TensorSpec {
	h, q, kv, ff := c.HiddenSize, c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim, c.IntermediateSize
	specs := []TensorSpec{{MixtralEmbedName, []int{c.VocabSize, h}, KindEmbedding}}
	add := func(name string, kind TensorKind, shape ...int) {
		specs = append(specs, TensorSpec{name, shape, kind})
	}
	for i := range c.NumHiddenLayers {
		add(MixtralAttnName(i, "q"), KindLinear, q, h)
		add(MixtralAttnName(i, "k"), KindLinear, kv, h)
		add(MixtralAttnName(i, "v"), KindLinear, kv, h)
		add(MixtralAttnName(i, "o"), KindLinear, h, q)
		add(MixtralGateName(i), KindRouter, c.NumLocalExperts, h)
		for e := range c.NumLocalExperts {
			add(MixtralExpertName(i, e, "w1"), KindLinear, ff, h)
			add(MixtralExpertName(i, e, "w2"), KindLinear, h, ff)
			add(MixtralExpertName(i, e, "w3"), KindLinear, ff, h)
		}
		add(MixtralInputNormName(i), KindNorm, h)
		add(MixtralPostAttnNormName(i), KindNorm, h)
	}
	add(MixtralNormName, KindNorm, h)
	if !c.TieWordEmbeddings {
		add(MixtralLMHeadName, KindEmbedding, c.VocabSize, h)
	}
	return specs
}

// optionalTensors returns tensors a checkpoint may store beyond ExpectedTensors(cfg, false):
// pre-gates, explicitly stored tied aliases.
func optionalTensors(cfg *Config) []TensorSpec {
	var specs []TensorSpec
	if c := cfg.Switch; c != nil {
		for _, s := range switchTensors(c, true) {
			if s.Kind == KindPreGate {
				specs = append(specs, s)
			}
		}
		for _, name := range []string{SwitchEmbedName(StackEncoder), SwitchEmbedName(StackDecoder)} {
			specs = append(specs, TensorSpec{name, []int{c.VocabSize, c.DModel}, KindEmbedding})
		}
		if c.TieWordEmbeddings {
			specs = append(specs, TensorSpec{SwitchLMHeadName, []int{c.VocabSize, c.DModel}, KindEmbedding})
		}
	}
	if c := cfg.Mixtral; c != nil && c.TieWordEmbeddings {
		specs = append(specs, TensorSpec{MixtralLMHeadName, []int{c.VocabSize, c.HiddenSize}, KindEmbedding})
	}
	return specs
}

// tiedAliases returns alias → stored name for cfg (applied only when the alias is not stored).
func tiedAliases(cfg *Config) map[string]string {
	m := map[string]string{}
	switch {
	case cfg == nil:
	case cfg.Switch != nil:
		// HF always shares the stacks' embed_tokens with shared; lm_head only when tied.
		m[SwitchEmbedName(StackEncoder)] = SwitchSharedName
		m[SwitchEmbedName(StackDecoder)] = SwitchSharedName
		if cfg.Switch.TieWordEmbeddings {
			m[SwitchLMHeadName] = SwitchSharedName
		}
	case cfg.Mixtral != nil:
		if cfg.Mixtral.TieWordEmbeddings {
			m[MixtralLMHeadName] = MixtralEmbedName
		}
	}
	return m
}

// MoEBlockLayout names one MoE block and its experts' tensors.
type MoEBlockLayout struct {
	Name    string     // "encoder.block.1", "decoder.block.3", "model.layers.0"
	Experts [][]string // per expert, its tensor names: Switch wi, wo; Mixtral w1, w3, w2
}

// MoELayout returns the MoE blocks of a model in forward order — the Switch encoder's sparse blocks,
// then the decoder's; Mixtral's layers — which is how the engine and the cluster number them.
func MoELayout(cfg *Config) []MoEBlockLayout {
	var out []MoEBlockLayout
	switch {
	case cfg == nil:
	case cfg.Switch != nil:
		c := cfg.Switch
		for _, decoder := range []bool{false, true} {
			stack := stackName(decoder)
			for _, b := range c.SparseBlocks(decoder) {
				l := MoEBlockLayout{Name: switchBlock(stack, b)}
				for e := range c.NumExperts {
					l.Experts = append(l.Experts, []string{SwitchExpertName(stack, b, e, "wi"), SwitchExpertName(stack, b, e, "wo")})
				}
				out = append(out, l)
			}
		}
	case cfg.Mixtral != nil:
		c := cfg.Mixtral
		for i := range c.NumHiddenLayers {
			l := MoEBlockLayout{Name: mixtralLayer(i)}
			for e := range c.NumLocalExperts {
				l.Experts = append(l.Experts, []string{MixtralExpertName(i, e, "w1"), MixtralExpertName(i, e, "w3"), MixtralExpertName(i, e, "w2")})
			}
			out = append(out, l)
		}
	}
	return out
}

// ExpertNamer gives the tensor names of expert e of MoE block b (blocks numbered as MoELayout numbers
// them), which are the same in a checkpoint and in the expert's blob: W1, W3 ("" where the
// architecture has no gated up projection, as Switch) and W2. The engine reads an expert from a
// checkpoint with it, the worker from a blob in its cache.
type ExpertNamer func(block, expert int) (w1, w3, w2 string)

// ExpertNames returns the ExpertNamer of cfg's model. An expert the model does not have gets ""
// for every name, which no checkpoint or blob holds, so that reading it fails rather than panics.
func ExpertNames(cfg *Config) ExpertNamer {
	blocks := MoELayout(cfg)
	return func(block, expert int) (string, string, string) {
		if block < 0 || block >= len(blocks) || expert < 0 || expert >= len(blocks[block].Experts) {
			return "", "", ""
		}
		names := blocks[block].Experts[expert]
		if len(names) == 3 { // Mixtral: w1 (gate), w3 (up), w2 (down)
			return names[0], names[1], names[2]
		}
		return names[0], "", names[1] // Switch: wi, wo
	}
}

// ExpertsPerBlock returns the number of experts of each of cfg's MoE blocks, numbered as MoELayout
// numbers them.
func ExpertsPerBlock(cfg *Config) []int {
	blocks := MoELayout(cfg)
	n := make([]int, len(blocks))
	for i, b := range blocks {
		n[i] = len(b.Experts)
	}
	return n
}

// ExpertShapes returns the [rows, cols] every expert's tensors must have under cfg, in the order
// ExpertNames names them: w1 (Switch's wi), w3 (zero for Switch) and w2 (Switch's wo), as HF stores
// a Linear's weight ([out, in]).
func ExpertShapes(cfg *Config) (w1, w3, w2 [2]int) {
	switch {
	case cfg.Switch != nil:
		c := cfg.Switch
		return [2]int{c.DFF, c.DModel}, [2]int{}, [2]int{c.DModel, c.DFF}
	case cfg.Mixtral != nil:
		c := cfg.Mixtral
		return [2]int{c.IntermediateSize, c.HiddenSize}, [2]int{c.IntermediateSize, c.HiddenSize}, [2]int{c.HiddenSize, c.IntermediateSize}
	}
	return
}
