package model

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"slices"
	"testing"
)

func fixtureDir(name string) string { return filepath.Join("..", "testdata", name) }

// openFixture opens a fixture's checkpoint, closed when the test ends.
func openFixture(t *testing.T, name string) *Checkpoint {
	t.Helper()
	c, err := OpenCheckpoint(fixtureDir(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFixturesOpenAndValidate(t *testing.T) {
	tests := []struct {
		give         string
		wantType     string
		wantTensors  int
		wantPreGates bool
		// a tensor and its shape
		tensor string
		shape  []int
		// aliases that must resolve to stored tensors
		aliases map[string]string
		absent  []string
	}{
		{
			give: "switch-tiny", wantType: ModelTypeSwitch, wantTensors: 149,
			tensor: "encoder.block.1.layer.1.mlp.experts.expert_3.wi.weight", shape: []int{128, 64},
			aliases: map[string]string{
				"encoder.embed_tokens.weight": "shared.weight",
				"decoder.embed_tokens.weight": "shared.weight",
				"lm_head.weight":              "shared.weight",
			},
			absent: []string{"encoder.block.1.layer.1.mlp.pre_gate.weight"},
		},
		{
			give: "switch-tiny-pregated", wantType: ModelTypeSwitch, wantTensors: 151, wantPreGates: true,
			tensor: "decoder.block.1.layer.2.mlp.pre_gate.weight", shape: []int{8, 64},
			aliases: map[string]string{"lm_head.weight": "shared.weight"},
			absent:  []string{"encoder.block.3.layer.1.mlp.pre_gate.weight"},
		},
		{
			give: "mixtral-tiny", wantType: ModelTypeMixtral, wantTensors: 4*(4+1+24+2) + 3,
			tensor: "model.layers.0.self_attn.k_proj.weight", shape: []int{32, 64},
			aliases: map[string]string{"lm_head.weight": "lm_head.weight"},
			absent:  []string{"model.rotary_emb.inv_freq"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			c := openFixture(t, tt.give)
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got := c.Config().ModelType; got != tt.wantType {
				t.Errorf("ModelType = %q, want %q", got, tt.wantType)
			}
			names := c.Names()
			if len(names) != tt.wantTensors {
				t.Errorf("len(Names()) = %d, want %d", len(names), tt.wantTensors)
			}
			if !slices.IsSorted(names) {
				t.Errorf("Names() not sorted")
			}
			if got := c.HasPreGates(); got != tt.wantPreGates {
				t.Errorf("HasPreGates() = %v, want %v", got, tt.wantPreGates)
			}
			info, err := c.Info(tt.tensor)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(info.Shape, tt.shape) || info.DType != F32 {
				t.Errorf("Info(%q) = %s %v, want F32 %v", tt.tensor, info.DType, info.Shape, tt.shape)
			}
			if info.File != filepath.Join(fixtureDir(tt.give), "model.safetensors") {
				t.Errorf("Info.File = %q", info.File)
			}
			for alias, target := range tt.aliases {
				if !c.Has(alias) {
					t.Errorf("Has(%q) = false", alias)
					continue
				}
				ai, err := c.Info(alias)
				if err != nil || ai.Name != target {
					t.Errorf("Info(%q) = %+v, %v; want stored tensor %q", alias, ai, err, target)
				}
				a, err := c.Float32(alias)
				if err != nil {
					t.Fatal(err)
				}
				b, err := c.Float32(target)
				if err != nil {
					t.Fatal(err)
				}
				if &a[0] != &b[0] {
					t.Errorf("alias %q does not share %q's data", alias, target)
				}
			}
			for _, n := range tt.absent {
				if c.Has(n) {
					t.Errorf("Has(%q) = true, want false", n)
				}
				if _, err := c.Info(n); !errorsIs(err, ErrTensorNotFound) {
					t.Errorf("Info(%q) error = %v, want ErrTensorNotFound", n, err)
				}
			}
		})
	}
}

func TestFixtureFloat32MatchesRawBytes(t *testing.T) {
	c, err := OpenCheckpoint(fixtureDir("switch-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
	got, err := c.Float32(name, 32, 4)
	if err != nil {
		t.Fatal(err)
	}
	raw, info, err := c.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 32*4*4 || info.NumElements() != 128 {
		t.Fatalf("raw bytes %d, elements %d", len(raw), info.NumElements())
	}
	nonzero := 0
	for i := range got {
		want := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		if got[i] != want {
			t.Fatalf("element %d = %v, want %v", i, got[i], want)
		}
		if want != 0 {
			nonzero++
		}
	}
	if nonzero < 100 {
		t.Errorf("only %d non-zero values: suspicious", nonzero)
	}
	if _, err := c.Float32(name, 4, 32); !errorsIs(err, ErrShapeMismatch) || !contains(err, name, "[32 4]", "[4 32]") {
		t.Errorf("Float32 with wrong shape: %v", err)
	}
}

func TestGoldenInputIDs(t *testing.T) {
	tests := []struct {
		give  string
		shape []int
		want  []int64
	}{
		{"switch-tiny", []int{2, 12}, []int64{
			335, 150, 293, 221, 369, 468, 288, 197, 334, 123, 40, 241,
			45, 210, 409, 81, 34, 495, 322, 57, 29, 0, 0, 0}},
		{"switch-tiny-pregated", []int{2, 12}, []int64{
			335, 150, 293, 221, 369, 468, 288, 197, 334, 123, 40, 241,
			45, 210, 409, 81, 34, 495, 322, 57, 29, 0, 0, 0}},
		{"mixtral-tiny", []int{2, 10}, []int64{
			1, 95, 138, 5, 366, 6, 345, 458, 98, 61,
			1, 349, 143, 38, 400, 46, 419, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			g, err := OpenTensorFile(filepath.Join(fixtureDir(tt.give), "golden.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if g.Config() != nil {
				t.Errorf("Config() = %+v, want nil", g.Config())
			}
			got, err := g.Int64("input_ids", tt.shape...)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("input_ids = %v, want %v", got, tt.want)
			}
			if _, err := g.Int64("logits"); !errorsIs(err, ErrDType) {
				t.Errorf("Int64(logits) error = %v, want ErrDType", err)
			}
			if err := g.Validate(); !errorsIs(err, ErrConfig) {
				t.Errorf("Validate() on a tensor file = %v, want ErrConfig", err)
			}
		})
	}
}
