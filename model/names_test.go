package model

import (
	"slices"
	"testing"
)

// The helpers must produce exactly the tensor names stored in the fixtures, with their shapes.
func TestExpectedTensorsMatchFixtures(t *testing.T) {
	tests := []struct {
		give     string
		preGates bool
	}{
		{"switch-tiny", false},
		{"switch-tiny-pregated", true},
		{"mixtral-tiny", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			c := openFixture(t, tt.give)
			specs, err := ExpectedTensors(c.Config(), tt.preGates)
			if err != nil {
				t.Fatal(err)
			}
			produced := map[string]bool{}
			for _, s := range specs {
				if produced[s.Name] {
					t.Errorf("helpers produce %q twice", s.Name)
				}
				produced[s.Name] = true
				info, err := c.Info(s.Name)
				if err != nil {
					t.Errorf("produced name not in fixture: %v", err)
					continue
				}
				if info.Name != s.Name {
					t.Errorf("%q resolved through an alias to %q; ExpectedTensors must list stored tensors only", s.Name, info.Name)
				}
				if !slices.Equal(info.Shape, s.Shape) {
					t.Errorf("%q: fixture shape %v, helpers say %v", s.Name, info.Shape, s.Shape)
				}
			}
			for _, n := range c.Names() {
				if !produced[n] {
					t.Errorf("fixture tensor %q is not produced by the helpers", n)
				}
			}
		})
	}
}

func TestNameHelpers(t *testing.T) {
	tests := []struct {
		give string
		want string
	}{
		{SwitchAttnName(StackEncoder, 2, false, "q"), "encoder.block.2.layer.0.SelfAttention.q.weight"},
		{SwitchAttnName(StackDecoder, 1, false, "o"), "decoder.block.1.layer.0.SelfAttention.o.weight"},
		{SwitchAttnName(StackDecoder, 3, true, "k"), "decoder.block.3.layer.1.EncDecAttention.k.weight"},
		{SwitchRelativeBiasName(StackDecoder), "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"},
		{SwitchLayerNormName(StackDecoder, 1, 1), "decoder.block.1.layer.1.layer_norm.weight"},
		{SwitchFFLayerNormName(StackEncoder, 1), "encoder.block.1.layer.1.layer_norm.weight"},
		{SwitchFFLayerNormName(StackDecoder, 1), "decoder.block.1.layer.2.layer_norm.weight"},
		{SwitchFFPrefix(StackEncoder, 3), "encoder.block.3.layer.1"},
		{SwitchFFPrefix(StackDecoder, 3), "decoder.block.3.layer.2"},
		{SwitchFFPrefix(StackDecoder, 3) + ".mlp.router.classifier.weight", SwitchRouterName(StackDecoder, 3)},
		{SwitchFFPrefix(StackEncoder, 1) + ".layer_norm.weight", SwitchFFLayerNormName(StackEncoder, 1)},
		{SwitchDenseName(StackEncoder, 0, "wi"), "encoder.block.0.layer.1.mlp.wi.weight"},
		{SwitchRouterName(StackDecoder, 1), "decoder.block.1.layer.2.mlp.router.classifier.weight"},
		{SwitchExpertName(StackEncoder, 1, 7, "wo"), "encoder.block.1.layer.1.mlp.experts.expert_7.wo.weight"},
		{SwitchPreGateName(StackDecoder, 1), "decoder.block.1.layer.2.mlp.pre_gate.weight"},
		{SwitchFinalLayerNormName(StackEncoder), "encoder.final_layer_norm.weight"},
		{SwitchEmbedName(StackDecoder), "decoder.embed_tokens.weight"},
		{MixtralAttnName(5, "v"), "model.layers.5.self_attn.v_proj.weight"},
		{MixtralInputNormName(0), "model.layers.0.input_layernorm.weight"},
		{MixtralPostAttnNormName(0), "model.layers.0.post_attention_layernorm.weight"},
		{MixtralGateName(31), "model.layers.31.block_sparse_moe.gate.weight"},
		{MixtralExpertName(2, 7, "w3"), "model.layers.2.block_sparse_moe.experts.7.w3.weight"},
	}
	for _, tt := range tests {
		if tt.give != tt.want {
			t.Errorf("got %q, want %q", tt.give, tt.want)
		}
	}
}

func TestSparseAndPreGateBlocks(t *testing.T) {
	tests := []struct {
		give        SwitchConfig
		decoder     bool
		wantSparse  []int
		wantPreGate []int
	}{
		{SwitchConfig{NumLayers: 4, EncoderSparseStep: 2}, false, []int{1, 3}, []int{1}},
		{SwitchConfig{NumLayers: 12, EncoderSparseStep: 2}, false, []int{1, 3, 5, 7, 9, 11}, []int{1, 3, 5, 7, 9}},
		{SwitchConfig{NumDecoderLayers: 3, DecoderSparseStep: 1}, true, []int{0, 1, 2}, []int{0, 1}},
		{SwitchConfig{NumLayers: 12, EncoderSparseStep: 4}, false, []int{1, 5, 9}, []int{1, 5}},
		{SwitchConfig{NumLayers: 4, EncoderSparseStep: 0}, false, nil, nil},
	}
	for _, tt := range tests {
		if got := tt.give.SparseBlocks(tt.decoder); !slices.Equal(got, tt.wantSparse) {
			t.Errorf("%+v SparseBlocks = %v, want %v", tt.give, got, tt.wantSparse)
		}
		if got := tt.give.PreGateBlocks(tt.decoder); !slices.Equal(got, tt.wantPreGate) {
			t.Errorf("%+v PreGateBlocks = %v, want %v", tt.give, got, tt.wantPreGate)
		}
	}
}

// Every expert's names are tensors of the checkpoint, of the shapes the engine reads (W1, W3
// [d_ff × d_model], W2 [d_model × d_ff]), and an expert the model lacks has no names.
func TestExpertNames(t *testing.T) {
	tests := []struct {
		give       string
		wantBlocks int  // MoE blocks
		gated      bool // W3 exists
	}{
		{"switch-tiny", 4, false},
		{"switch-tiny-pregated", 4, false},
		{"mixtral-tiny", 4, true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			c := openFixture(t, tt.give)
			cfg := c.Config()
			names, perBlock := ExpertNames(cfg), ExpertsPerBlock(cfg)
			if len(perBlock) != tt.wantBlocks {
				t.Fatalf("%d MoE blocks, want %d", len(perBlock), tt.wantBlocks)
			}
			seen := map[string]bool{}
			for b, n := range perBlock {
				if n != len(MoELayout(cfg)[b].Experts) || n == 0 {
					t.Errorf("block %d: %d experts, the layout has %d", b, n, len(MoELayout(cfg)[b].Experts))
				}
				for e := range n {
					w1, w3, w2 := names(b, e)
					if (w3 != "") != tt.gated {
						t.Errorf("block %d expert %d: w3 %q, gated %v", b, e, w3, tt.gated)
					}
					for _, name := range []string{w1, w3, w2} {
						if name == "" {
							continue
						}
						if seen[name] {
							t.Errorf("%s named twice", name)
						}
						seen[name] = true
					}
					i1, err1 := c.Info(w1)
					i2, err2 := c.Info(w2)
					if err1 != nil || err2 != nil {
						t.Fatalf("block %d expert %d: %v, %v", b, e, err1, err2)
					}
					if len(i1.Shape) != 2 || !slices.Equal(i2.Shape, []int{i1.Shape[1], i1.Shape[0]}) {
						t.Errorf("block %d expert %d: W1 %v, W2 %v: want transposes", b, e, i1.Shape, i2.Shape)
					}
				}
			}
			for _, k := range [][2]int{{-1, 0}, {len(perBlock), 0}, {0, -1}, {0, perBlock[0]}} {
				if w1, w3, w2 := names(k[0], k[1]); w1 != "" || w3 != "" || w2 != "" {
					t.Errorf("block %d expert %d: names %q %q %q, want none", k[0], k[1], w1, w3, w2)
				}
			}
		})
	}
	if w1, _, _ := ExpertNames(nil)(0, 0); w1 != "" || len(ExpertsPerBlock(nil)) != 0 {
		t.Errorf("a nil config has experts: %q, %v", w1, ExpertsPerBlock(nil))
	}
}
