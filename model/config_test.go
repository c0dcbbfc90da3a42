package model

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestLoadFixtureConfigs(t *testing.T) {
	sw, err := LoadConfig(filepath.Join(fixtureDir("switch-tiny"), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	wantSwitch := SwitchConfig{
		VocabSize: 512, DModel: 64, DKV: 16, DFF: 128, NumLayers: 4, NumDecoderLayers: 4, NumHeads: 4, NumExperts: 8,
		NumSparseEncoderLayers: 2, NumSparseDecoderLayers: 2, EncoderSparseStep: 2, DecoderSparseStep: 2,
		ExpertCapacity: 64, RelativeAttentionNumBuckets: 32, RelativeAttentionMaxDistance: 128, LayerNormEpsilon: 1e-6,
		DecoderStartTokenID: 0, EOSTokenID: 1, PadTokenID: 0, TieWordEmbeddings: true, DenseActFn: "relu", TorchDtype: "float32",
	}
	if sw.ModelType != ModelTypeSwitch || sw.Switch == nil || sw.Mixtral != nil || *sw.Switch != wantSwitch {
		t.Errorf("switch config = %+v / %+v\nwant %+v", sw, sw.Switch, wantSwitch)
	}
	if !slices.Equal(sw.Architectures, []string{"SwitchTransformersForConditionalGeneration"}) {
		t.Errorf("Architectures = %q", sw.Architectures)
	}
	mx, err := LoadConfig(filepath.Join(fixtureDir("mixtral-tiny"), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	m := mx.Mixtral
	if mx.ModelType != ModelTypeMixtral || m == nil || mx.Switch != nil {
		t.Fatalf("mixtral config = %+v", mx)
	}
	wantMixtral := MixtralConfig{
		VocabSize: 512, HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 4, NumAttentionHeads: 4, NumKeyValueHeads: 2,
		HeadDim: 16, NumLocalExperts: 8, NumExpertsPerTok: 2, MaxPositionEmbeddings: 256, RMSNormEps: 1e-5, RopeTheta: 10000,
		BOSTokenID: 1, EOSTokenID: 2, EOSTokenIDs: []int{2}, PadTokenID: -1, TieWordEmbeddings: false, HiddenAct: "silu", SlidingWindow: 0, TorchDtype: "float32",
	}
	if !reflect.DeepEqual(*m, wantMixtral) {
		t.Errorf("mixtral config = %+v\nwant %+v", *m, wantMixtral)
	}
}

func TestParseConfigDefaultsAndNulls(t *testing.T) {
	tests := []struct {
		name  string
		give  string
		check func(c *Config) bool
	}{
		{"switch HF defaults", `{"model_type":"switch_transformers"}`, func(c *Config) bool {
			s := c.Switch
			return s.VocabSize == 32128 && s.DModel == 768 && s.DFF == 2048 && s.NumLayers == 12 && s.NumDecoderLayers == 12 &&
				s.NumSparseEncoderLayers == 3 && s.EncoderSparseStep == 4 && s.DecoderSparseStep == 4 && s.TieWordEmbeddings &&
				s.DenseActFn == "relu" && s.DecoderStartTokenID == 0 && s.EOSTokenID == 1 && s.LayerNormEpsilon == 1e-6 &&
				s.IsSparse(1, false) && s.IsSparse(5, true) && !s.IsSparse(2, false) && !s.IsSparse(0, false)
		}},
		{"switch decoder layers default to num_layers", `{"model_type":"switch_transformers","num_layers":6,"num_decoder_layers":null,"num_sparse_encoder_layers":3,"num_sparse_decoder_layers":6}`, func(c *Config) bool {
			s := c.Switch
			return s.NumDecoderLayers == 6 && s.EncoderSparseStep == 2 && s.DecoderSparseStep == 1 && s.IsSparse(0, true)
		}},
		{"switch no sparse layers", `{"model_type":"switch_transformers","num_sparse_encoder_layers":0,"encoder_sparse_step":0}`, func(c *Config) bool {
			return c.Switch.EncoderSparseStep == 0 && !c.Switch.IsSparse(1, false) && c.Switch.IsSparse(1, true)
		}},
		{"switch integral float", `{"model_type":"switch_transformers","d_model":768.0}`, func(c *Config) bool { return c.Switch.DModel == 768 }},
		{"mixtral HF defaults", `{"model_type":"mixtral"}`, func(c *Config) bool {
			m := c.Mixtral
			return m.VocabSize == 32000 && m.HiddenSize == 4096 && m.IntermediateSize == 14336 && m.NumHiddenLayers == 32 &&
				m.NumAttentionHeads == 32 && m.NumKeyValueHeads == 8 && m.HeadDim == 128 && m.NumLocalExperts == 8 &&
				m.NumExpertsPerTok == 2 && m.MaxPositionEmbeddings == 131072 && m.RopeTheta == 1e6 && m.RMSNormEps == 1e-5 &&
				m.BOSTokenID == 1 && m.EOSTokenID == 2 && m.PadTokenID == -1 && !m.TieWordEmbeddings && m.HiddenAct == "silu"
		}},
		{"mixtral nulls", `{"model_type":"mixtral","head_dim":null,"sliding_window":null,"bos_token_id":null,"num_key_value_heads":null,"rope_scaling":null,"torch_dtype":null}`, func(c *Config) bool {
			m := c.Mixtral
			return m.HeadDim == 128 && m.SlidingWindow == 0 && m.BOSTokenID == -1 && m.NumKeyValueHeads == 32 && m.TorchDtype == ""
		}},
		{"mixtral eos list and explicit head_dim", `{"model_type":"mixtral","eos_token_id":[7,2],"head_dim":64,"sliding_window":4096,"dtype":"bfloat16"}`, func(c *Config) bool {
			m := c.Mixtral
			return m.EOSTokenID == 7 && slices.Equal(m.EOSTokenIDs, []int{7, 2}) && m.HeadDim == 64 && m.SlidingWindow == 4096 && m.TorchDtype == "bfloat16"
		}},
		{"mixtral eos null", `{"model_type":"mixtral","eos_token_id":null}`, func(c *Config) bool {
			return c.Mixtral.EOSTokenID == -1 && len(c.Mixtral.EOSTokenIDs) == 0
		}},
		{"mixtral rope_parameters", `{"model_type":"mixtral","rope_parameters":{"rope_type":"default","rope_theta":5000.0}}`, func(c *Config) bool {
			return c.Mixtral.RopeTheta == 5000
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.give))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("unexpected config: switch %+v mixtral %+v", c.Switch, c.Mixtral)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		give    string
		wantErr error
		want    []string
	}{
		{"not json", `{"model_type":`, ErrConfig, []string{"not a JSON object"}},
		{"unknown model_type", `{"model_type":"llama"}`, ErrUnsupported, []string{`model_type "llama"`}},
		{"missing model_type", `{"d_model":4}`, ErrConfig, []string{"model_type is missing"}},
		{"inconsistent sparse step", `{"model_type":"switch_transformers","num_layers":4,"num_sparse_encoder_layers":2,"encoder_sparse_step":4}`, ErrConfig, []string{"encoder_sparse_step is 4", "give 2"}},
		{"too many sparse layers", `{"model_type":"switch_transformers","num_layers":2,"num_sparse_encoder_layers":3}`, ErrConfig, []string{"num_sparse_encoder_layers is 3"}},
		{"gelu switch", `{"model_type":"switch_transformers","dense_act_fn":"gelu_new"}`, ErrUnsupported, []string{`dense_act_fn "gelu_new"`}},
		{"router bias", `{"model_type":"switch_transformers","router_bias":true}`, ErrUnsupported, []string{"router_bias"}},
		{"wrong type", `{"model_type":"switch_transformers","d_model":"64"}`, ErrConfig, []string{`d_model is "64"`, "integer"}},
		{"fractional", `{"model_type":"switch_transformers","d_ff":1.5}`, ErrConfig, []string{"d_ff is 1.5"}},
		{"zero heads", `{"model_type":"switch_transformers","num_heads":0}`, ErrConfig, []string{"num_heads is 0"}},
		{"rope scaling", `{"model_type":"mixtral","rope_scaling":{"type":"linear","factor":2.0}}`, ErrUnsupported, []string{"rope_scaling", "linear"}},
		{"rope_parameters yarn", `{"model_type":"mixtral","rope_parameters":{"rope_type":"yarn"}}`, ErrUnsupported, []string{`rope_type "yarn"`}},
		{"gqa", `{"model_type":"mixtral","num_attention_heads":32,"num_key_value_heads":5}`, ErrConfig, []string{"num_attention_heads 32", "num_key_value_heads 5"}},
		{"top-k", `{"model_type":"mixtral","num_experts_per_tok":9}`, ErrConfig, []string{"num_experts_per_tok 9 exceeds num_local_experts 8"}},
		{"act", `{"model_type":"mixtral","hidden_act":"gelu"}`, ErrUnsupported, []string{`hidden_act "gelu"`}},
		{"eos type", `{"model_type":"mixtral","eos_token_id":"2"}`, ErrConfig, []string{"eos_token_id"}},
		{"eos out of vocab", `{"model_type":"mixtral","vocab_size":10,"eos_token_id":[2,99]}`, ErrConfig, []string{"token id 99"}},
		{"negative vocab", `{"model_type":"mixtral","vocab_size":-1}`, ErrConfig, []string{"vocab_size is -1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.give))
			if !errorsIs(err, tt.wantErr) || !contains(err, tt.want...) {
				t.Errorf("ParseConfig error = %v\nwant %v containing %q", err, tt.wantErr, tt.want)
			}
		})
	}
}

func TestLoadConfigNamesFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		give *string // file content; nil = missing
		want []string
	}{
		{"missing", nil, []string{"config.json", "no such file"}},
		{"bad", ptr(`{"model_type":"gpt2"}`), []string{"config.json", `"gpt2"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name, "config.json")
			if tt.give != nil {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(*tt.give), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := LoadConfig(path)
			if !contains(err, tt.want...) || !strings.Contains(err.Error(), path) {
				t.Errorf("LoadConfig error = %v, want it to name %s and contain %q", err, path, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
