package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// tensorSet is an in-memory list of tensors, used to build test checkpoints.
type tensorSet struct {
	infos []TensorInfo
	data  [][]byte
}

func loadTensors(t *testing.T, path string) *tensorSet {
	t.Helper()
	f, err := OpenSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ts := &tensorSet{}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		b, err := f.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		info.File = ""
		ts.infos = append(ts.infos, info)
		ts.data = append(ts.data, bytes.Clone(b))
	}
	return ts
}

func (ts *tensorSet) drop(name string) *tensorSet {
	i := slices.IndexFunc(ts.infos, func(ti TensorInfo) bool { return ti.Name == name })
	if i < 0 {
		panic("test bug: no tensor " + name)
	}
	ts.infos = slices.Delete(ts.infos, i, i+1)
	ts.data = slices.Delete(ts.data, i, i+1)
	return ts
}

func (ts *tensorSet) add(name string, dt DType, shape ...int) *tensorSet {
	ti := TensorInfo{Name: name, DType: dt, Shape: shape}
	ts.infos = append(ts.infos, ti)
	ts.data = append(ts.data, make([]byte, ti.NumBytes()))
	return ts
}

func (ts *tensorSet) write(t *testing.T, path string) {
	t.Helper()
	if err := WriteSafetensors(path, ts.infos, ts.data, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

// writeShards writes ts round-robin into nshards shards plus an index and returns the weight map.
func (ts *tensorSet) writeShards(t *testing.T, dir string, nshards int) map[string]string {
	t.Helper()
	weightMap := map[string]string{}
	for s := range nshards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, nshards)
		part := &tensorSet{}
		for i, ti := range ts.infos {
			if i%nshards == s {
				part.infos = append(part.infos, ti)
				part.data = append(part.data, ts.data[i])
				weightMap[ti.Name] = name
			}
		}
		part.write(t, filepath.Join(dir, name))
	}
	writeIndex(t, dir, weightMap)
	return weightMap
}

func writeIndex(t *testing.T, dir string, weightMap map[string]string) {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": 123}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, IndexFileName), string(b))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newDir makes a checkpoint directory from a fixture's config (edited by cfgEdit) and tensors.
func newDir(t *testing.T, fixture string, cfgEdit func(string) string, ts *tensorSet) string {
	t.Helper()
	dir := t.TempDir()
	cfg := readFile(t, filepath.Join(fixtureDir(fixture), "config.json"))
	if cfgEdit != nil {
		cfg = cfgEdit(cfg)
	}
	writeFile(t, filepath.Join(dir, ConfigFileName), cfg)
	if ts != nil {
		ts.write(t, filepath.Join(dir, SafetensorsFileName))
	}
	return dir
}

func switchTensors_(t *testing.T) *tensorSet {
	return loadTensors(t, filepath.Join(fixtureDir("switch-tiny"), SafetensorsFileName))
}

func mixtralTensors_(t *testing.T) *tensorSet {
	return loadTensors(t, filepath.Join(fixtureDir("mixtral-tiny"), SafetensorsFileName))
}

func TestShardedCheckpointRoundTrip(t *testing.T) {
	orig := switchTensors_(t)
	dir := newDir(t, "switch-tiny", nil, nil)
	weightMap := orig.writeShards(t, dir, 3)
	c, err := OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got := len(c.Names()); got != len(orig.infos) {
		t.Errorf("%d tensors, want %d", got, len(orig.infos))
	}
	for i, ti := range orig.infos {
		b, info, err := c.Bytes(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, orig.data[i]) {
			t.Errorf("tensor %q differs after the sharded round trip", ti.Name)
		}
		if want := filepath.Join(dir, weightMap[ti.Name]); info.File != want {
			t.Errorf("tensor %q in %s, want %s", ti.Name, info.File, want)
		}
	}
	if info, err := c.Info("lm_head.weight"); err != nil || info.Name != SwitchSharedName {
		t.Errorf("tied lm_head across shards: %+v, %v", info, err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

func TestBadCheckpoints(t *testing.T) {
	const router = "encoder.block.1.layer.1.mlp.router.classifier.weight"
	tests := []struct {
		name     string
		setup    func(t *testing.T) string // returns the directory
		validate bool                      // error expected from Validate rather than OpenCheckpoint
		wantErr  error
		want     []string
	}{
		{name: "missing config.json", wantErr: ErrConfig, want: []string{"config.json", "no such file"},
			setup: func(t *testing.T) string {
				dir := t.TempDir()
				switchTensors_(t).write(t, filepath.Join(dir, SafetensorsFileName))
				return dir
			}},
		{name: "unknown model_type", wantErr: ErrUnsupported, want: []string{"config.json", `model_type "t5"`},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", func(s string) string {
					return strings.Replace(s, `"switch_transformers"`, `"t5"`, 1)
				}, switchTensors_(t))
			}},
		{name: "no weights", wantErr: ErrCheckpoint, want: []string{"neither model.safetensors nor model.safetensors.index.json"},
			setup: func(t *testing.T) string { return newDir(t, "switch-tiny", nil, nil) }},
		{name: "truncated weights", wantErr: ErrMalformed, want: []string{"model.safetensors", "file is truncated"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, switchTensors_(t))
				p := filepath.Join(dir, SafetensorsFileName)
				st, _ := os.Stat(p)
				if err := os.Truncate(p, st.Size()-100); err != nil {
					t.Fatal(err)
				}
				return dir
			}},
		{name: "missing tensor", validate: true, wantErr: ErrCheckpoint, want: []string{"missing tensor", `"` + router + `"`},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", nil, switchTensors_(t).drop(router))
			}},
		{name: "wrong shape in config", validate: true, wantErr: ErrShapeMismatch,
			want: []string{`"shared.weight"`, "got shape [512 64], want [512 32]"},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", func(s string) string {
					s = strings.Replace(s, `"d_model": 64`, `"d_model": 32`, 1)
					return strings.Replace(s, `"d_kv": 16`, `"d_kv": 8`, 1)
				}, switchTensors_(t))
			}},
		{name: "config has more layers", validate: true, wantErr: ErrCheckpoint,
			want: []string{"missing tensor", `"encoder.block.4.layer.0.SelfAttention.q.weight"`},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", func(s string) string {
					s = strings.Replace(s, `"num_sparse_encoder_layers": 2`, `"num_sparse_encoder_layers": 3`, 1)
					return strings.Replace(s, `"num_layers": 4`, `"num_layers": 6`, 1)
				}, switchTensors_(t))
			}},
		{name: "unexpected tensor", validate: true, wantErr: ErrCheckpoint, want: []string{`"extra.weight"`, "not part of"},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", nil, switchTensors_(t).add("extra.weight", F32, 2))
			}},
		{name: "integer weight", validate: true, wantErr: ErrDType, want: []string{`"encoder.final_layer_norm.weight"`, "I32", "float"},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", nil, switchTensors_(t).drop("encoder.final_layer_norm.weight").add("encoder.final_layer_norm.weight", I32, 64))
			}},
		{name: "pre-gate shape", validate: true, wantErr: ErrShapeMismatch,
			want: []string{`"encoder.block.1.layer.1.mlp.pre_gate.weight"`, "got shape [4 64], want [8 64]"},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", nil, switchTensors_(t).add("encoder.block.1.layer.1.mlp.pre_gate.weight", F32, 4, 64))
			}},
		{name: "pre-gate on last sparse block", validate: true, wantErr: ErrCheckpoint,
			want: []string{`"encoder.block.3.layer.1.mlp.pre_gate.weight"`, "not part of"},
			setup: func(t *testing.T) string {
				return newDir(t, "switch-tiny", nil, switchTensors_(t).add("encoder.block.3.layer.1.mlp.pre_gate.weight", F32, 8, 64))
			}},
		{name: "untied mixtral without lm_head", validate: true, wantErr: ErrCheckpoint, want: []string{"missing tensor", `"lm_head.weight"`},
			setup: func(t *testing.T) string {
				return newDir(t, "mixtral-tiny", nil, mixtralTensors_(t).drop(MixtralLMHeadName))
			}},
		{name: "missing shard", wantErr: ErrCheckpoint, want: []string{"model-00002-of-00002.safetensors", "does not exist", IndexFileName},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				switchTensors_(t).writeShards(t, dir, 2)
				if err := os.Remove(filepath.Join(dir, "model-00002-of-00002.safetensors")); err != nil {
					t.Fatal(err)
				}
				return dir
			}},
		{name: "shard escapes dir", wantErr: ErrCheckpoint, want: []string{`"../outside.safetensors"`, "not a file inside"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				wm := switchTensors_(t).writeShards(t, dir, 2)
				wm[SwitchSharedName] = "../outside.safetensors"
				writeIndex(t, dir, wm)
				return dir
			}},
		{name: "absolute shard path", wantErr: ErrCheckpoint, want: []string{`"/etc/passwd"`, "not a file inside"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				wm := switchTensors_(t).writeShards(t, dir, 2)
				wm[SwitchSharedName] = "/etc/passwd"
				writeIndex(t, dir, wm)
				return dir
			}},
		{name: "tensor not in its shard", wantErr: ErrCheckpoint, want: []string{`"ghost.weight"`, "is mapped to", "but is not in it"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				wm := switchTensors_(t).writeShards(t, dir, 2)
				wm["ghost.weight"] = "model-00001-of-00002.safetensors"
				writeIndex(t, dir, wm)
				return dir
			}},
		{name: "shard tensor not in map", wantErr: ErrCheckpoint, want: []string{`"shared.weight"`, "is not mapped to it"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				wm := switchTensors_(t).writeShards(t, dir, 2)
				delete(wm, SwitchSharedName)
				writeIndex(t, dir, wm)
				return dir
			}},
		{name: "bad index json", wantErr: ErrCheckpoint, want: []string{IndexFileName},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				writeFile(t, filepath.Join(dir, IndexFileName), `{"weight_map": [1, 2]}`)
				return dir
			}},
		{name: "empty weight_map", wantErr: ErrCheckpoint, want: []string{IndexFileName, "weight_map is missing or empty"},
			setup: func(t *testing.T) string {
				dir := newDir(t, "switch-tiny", nil, nil)
				writeFile(t, filepath.Join(dir, IndexFileName), `{"metadata": {}}`)
				return dir
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t)
			c, err := OpenCheckpoint(dir)
			if tt.validate {
				if err != nil {
					t.Fatalf("OpenCheckpoint: %v", err)
				}
				defer c.Close()
				err = c.Validate()
			} else if err == nil {
				c.Close()
			}
			if !errorsIs(err, tt.wantErr) || !contains(err, tt.want...) {
				t.Errorf("error = %v\nwant %v containing %q", err, tt.wantErr, tt.want)
			}
		})
	}
}

func TestMixtralTiedLMHead(t *testing.T) {
	tie := func(s string) string {
		return strings.Replace(s, `"tie_word_embeddings": false`, `"tie_word_embeddings": true`, 1)
	}
	tests := []struct {
		name     string
		give     *tensorSet
		wantName string // what lm_head.weight resolves to
	}{
		{"absent → alias", mixtralTensors_(t).drop(MixtralLMHeadName), MixtralEmbedName},
		{"stored → stored", mixtralTensors_(t), MixtralLMHeadName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := OpenCheckpoint(newDir(t, "mixtral-tiny", tie, tt.give))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			info, err := c.Info(MixtralLMHeadName)
			if err != nil || info.Name != tt.wantName {
				t.Errorf("Info(lm_head) = %+v, %v; want %s", info, err, tt.wantName)
			}
			if slices.Contains(c.Names(), MixtralLMHeadName) != (tt.wantName == MixtralLMHeadName) {
				t.Errorf("Names() lists aliases or misses stored tensors: %v", c.Names())
			}
		})
	}
}

func TestFloat32ConvertsAndViews(t *testing.T) {
	vals := []float32{1.5, -2, 0.25}
	f32 := make([]byte, 12)
	if err := FromFloat32(f32, vals, F32); err != nil {
		t.Fatal(err)
	}
	bf := make([]byte, 6)
	if err := FromFloat32(bf, vals, BF16); err != nil {
		t.Fatal(err)
	}
	tensors := []TensorInfo{
		{Name: "aligned", DType: F32, Shape: []int{3}},
		{Name: "pad", DType: U8, Shape: []int{1}},
		{Name: "unaligned", DType: F32, Shape: []int{3}},
		{Name: "bf16", DType: BF16, Shape: []int{1, 3}},
		{Name: "ids", DType: I32, Shape: []int{2}},
	}
	path := filepath.Join(t.TempDir(), "t.safetensors")
	ids := []byte{5, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF}
	if err := WriteSafetensors(path, tensors, [][]byte{f32, {9}, f32, bf, ids}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := OpenTensorFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tests := []struct {
		give     string
		shape    []int
		wantView bool
	}{
		{"aligned", []int{3}, true},
		{"unaligned", []int{3}, false},
		{"bf16", []int{1, 3}, false},
	}
	for _, tt := range tests {
		got, err := c.Float32(tt.give, tt.shape...)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, vals) {
			t.Errorf("Float32(%q) = %v, want %v", tt.give, got, vals)
		}
		raw, _, _ := c.Bytes(tt.give)
		isView := unsafe.Pointer(&got[0]) == unsafe.Pointer(&raw[0])
		if isView != tt.wantView {
			t.Errorf("Float32(%q) view = %v, want %v", tt.give, isView, tt.wantView)
		}
	}
	if got, err := c.Int64("ids", 2); err != nil || !slices.Equal(got, []int64{5, -2}) {
		t.Errorf("Int64(ids) = %v, %v", got, err)
	}
	if _, err := c.Float32("bf16", 3); !errorsIs(err, ErrShapeMismatch) || !contains(err, `"bf16"`, path, "[1 3]", "[3]") {
		t.Errorf("Float32 shape error = %v", err)
	}
	if _, err := c.Float32("nope"); !errorsIs(err, ErrTensorNotFound) || !contains(err, `"nope"`, path) {
		t.Errorf("Float32(nope) error = %v", err)
	}
	if v, _ := c.Float32("aligned"); math.IsNaN(float64(v[0])) {
		t.Error("unexpected NaN")
	}
}
