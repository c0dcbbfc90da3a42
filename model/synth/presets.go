package synth

import "github.com/pregate/pregate/model"

// Architectures accepted in Options.Arch.
const (
	ArchSwitch  = "switch"
	ArchMixtral = "mixtral"
)

const (
	switchArchitecture  = "SwitchTransformersForConditionalGeneration"
	mixtralArchitecture = "MixtralForCausalLM"
)

// preset returns the named preset's config (a fresh copy), its architecture, and whether it exists.
func preset(name string) (*model.Config, string, bool) {
	switch name {
	case "switch-base-8", "switch-base-16", "switch-base-32", "switch-base-64", "switch-base-128", "switch-base-256":
		experts := map[string]int{
			"switch-base-8": 8, "switch-base-16": 16, "switch-base-32": 32,
			"switch-base-64": 64, "switch-base-128": 128, "switch-base-256": 256,
		}[name]
		return switchConfig(model.SwitchConfig{
			VocabSize: 32128, DModel: 768, DKV: 64, DFF: 3072, NumHeads: 12,
			NumLayers: 12, NumDecoderLayers: 12, NumSparseEncoderLayers: 6, NumSparseDecoderLayers: 6,
			NumExperts: experts, ExpertCapacity: 64,
		}), ArchSwitch, true
	case "switch-large-128":
		return switchConfig(model.SwitchConfig{
			VocabSize: 32128, DModel: 1024, DKV: 64, DFF: 4096, NumHeads: 16,
			NumLayers: 24, NumDecoderLayers: 24, NumSparseEncoderLayers: 12, NumSparseDecoderLayers: 12,
			NumExperts: 128, ExpertCapacity: 64,
		}), ArchSwitch, true
	case "switch-tiny": // the shape of testdata/switch-tiny
		return switchConfig(model.SwitchConfig{
			VocabSize: 512, DModel: 64, DKV: 16, DFF: 128, NumHeads: 4,
			NumLayers: 4, NumDecoderLayers: 4, NumSparseEncoderLayers: 2, NumSparseDecoderLayers: 2,
			NumExperts: 8, ExpertCapacity: 64,
		}), ArchSwitch, true
	case "mixtral-8x7b":
		return mixtralConfig(model.MixtralConfig{
			VocabSize: 32000, HiddenSize: 4096, IntermediateSize: 14336, NumHiddenLayers: 32,
			NumAttentionHeads: 32, NumKeyValueHeads: 8, NumLocalExperts: 8, NumExpertsPerTok: 2,
			MaxPositionEmbeddings: 32768, RopeTheta: 1e6,
		}), ArchMixtral, true
	case "mixtral-bench": // a Mixtral-shaped model small enough for benchmarks (~0.79B parameters)
		return mixtralConfig(model.MixtralConfig{
			VocabSize: 32000, HiddenSize: 1024, IntermediateSize: 3584, NumHiddenLayers: 8,
			NumAttentionHeads: 16, NumKeyValueHeads: 4, NumLocalExperts: 8, NumExpertsPerTok: 2,
			MaxPositionEmbeddings: 32768, RopeTheta: 1e6,
		}), ArchMixtral, true
	case "mixtral-tiny": // the shape of testdata/mixtral-tiny
		return mixtralConfig(model.MixtralConfig{
			VocabSize: 512, HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 4,
			NumAttentionHeads: 4, NumKeyValueHeads: 2, NumLocalExperts: 8, NumExpertsPerTok: 2,
			MaxPositionEmbeddings: 256, RopeTheta: 10000,
		}), ArchMixtral, true
	}
	return nil, "", false
}

// Presets returns the preset names, sorted.
func Presets() []string {
	return []string{
		"mixtral-8x7b", "mixtral-bench", "mixtral-tiny",
		"switch-base-128", "switch-base-16", "switch-base-256", "switch-base-32", "switch-base-64", "switch-base-8",
		"switch-large-128", "switch-tiny",
	}
}

// switchConfig completes a preset with HF's fixed values.
func switchConfig(s model.SwitchConfig) *model.Config {
	s.RelativeAttentionNumBuckets = 32
	s.RelativeAttentionMaxDistance = 128
	s.LayerNormEpsilon = 1e-6
	s.DecoderStartTokenID, s.EOSTokenID, s.PadTokenID = 0, 1, 0
	s.TieWordEmbeddings = true
	s.DenseActFn = "relu"
	setSparseSteps(&s)
	return &model.Config{ModelType: model.ModelTypeSwitch, Architectures: []string{switchArchitecture}, Switch: &s}
}

func setSparseSteps(s *model.SwitchConfig) {
	s.EncoderSparseStep, s.DecoderSparseStep = 0, 0
	if s.NumSparseEncoderLayers > 0 {
		s.EncoderSparseStep = s.NumLayers / s.NumSparseEncoderLayers
	}
	if s.NumSparseDecoderLayers > 0 {
		s.DecoderSparseStep = s.NumDecoderLayers / s.NumSparseDecoderLayers
	}
}

func mixtralConfig(m model.MixtralConfig) *model.Config {
	m.HeadDim = m.HiddenSize / m.NumAttentionHeads
	m.RMSNormEps = 1e-5
	m.BOSTokenID, m.EOSTokenID, m.EOSTokenIDs, m.PadTokenID = 1, 2, []int{2}, -1
	m.HiddenAct = "silu"
	return &model.Config{ModelType: model.ModelTypeMixtral, Architectures: []string{mixtralArchitecture}, Mixtral: &m}
}
