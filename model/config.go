package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
)

// Model types (config.json "model_type") supported.
const (
	ModelTypeSwitch  = "switch_transformers"
	ModelTypeMixtral = "mixtral"
)

// Config is the model's HuggingFace config.json, for the two architectures supported.
type Config struct {
	ModelType     string // "switch_transformers" | "mixtral"
	Architectures []string
	Switch        *SwitchConfig  // set when ModelType == "switch_transformers"
	Mixtral       *MixtralConfig // set when ModelType == "mixtral"
}

// SwitchConfig holds the fields of HF's SwitchTransformersConfig that matter for inference. Absent
// or null fields take HF's defaults.
type SwitchConfig struct {
	VocabSize, DModel, DKV, DFF, NumLayers, NumDecoderLayers, NumHeads, NumExperts int
	NumSparseEncoderLayers, NumSparseDecoderLayers                                 int
	// EncoderSparseStep and DecoderSparseStep are derived as HF does: num_layers //
	// num_sparse_encoder_layers (decoder: num_decoder_layers // num_sparse_decoder_layers), 0 when
	// there are no sparse layers. Values carried by config.json must agree.
	EncoderSparseStep, DecoderSparseStep int
	ExpertCapacity                       int
	RelativeAttentionNumBuckets          int
	RelativeAttentionMaxDistance         int
	LayerNormEpsilon                     float64
	// Token ids; -1 means null. DecoderStartTokenID defaults to PadTokenID (the T5 convention).
	DecoderStartTokenID, EOSTokenID, PadTokenID int
	TieWordEmbeddings                           bool   // default true
	DenseActFn                                  string // only "relu"
	RouterBias                                  bool   // must be false
	TorchDtype                                  string
}

// MixtralConfig holds the fields of HF's MixtralConfig that matter for inference. Absent or null
// fields take HF's defaults.
type MixtralConfig struct {
	VocabSize, HiddenSize, IntermediateSize, NumHiddenLayers, NumAttentionHeads, NumKeyValueHeads int
	HeadDim                                                                                       int // null/absent → HiddenSize/NumAttentionHeads
	NumLocalExperts, NumExpertsPerTok, MaxPositionEmbeddings                                      int
	RMSNormEps, RopeTheta                                                                         float64
	// Token ids; -1 means null. eos_token_id may be an int or a list: EOSTokenID is the first,
	// EOSTokenIDs all of them (empty for null).
	BOSTokenID, EOSTokenID int
	EOSTokenIDs            []int
	PadTokenID             int    // -1 = null (HF default)
	TieWordEmbeddings      bool   // default false
	HiddenAct              string // only "silu"
	SlidingWindow          int    // 0 = none (null)
	TorchDtype             string
}

// LoadConfig reads and validates the config.json at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses config.json bytes, applies HF defaults and validates the result.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %w", ErrConfig, err)
	}
	f := fields{raw: raw}
	c := &Config{ModelType: f.str("model_type", "")}
	c.Architectures = f.strList("architectures")
	switch c.ModelType {
	case ModelTypeSwitch:
		c.Switch = parseSwitch(&f)
	case ModelTypeMixtral:
		c.Mixtral = parseMixtral(&f)
	case "":
		if f.err == nil {
			return nil, fmt.Errorf("%w: model_type is missing", ErrConfig)
		}
	default:
		return nil, fmt.Errorf("%w: model_type %q (supported: %q, %q)", ErrUnsupported, c.ModelType, ModelTypeSwitch, ModelTypeMixtral)
	}
	if f.err != nil {
		return nil, f.err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks the architecture-specific config.
func (c *Config) Validate() error {
	switch {
	case c.ModelType == ModelTypeSwitch && c.Switch != nil:
		return c.Switch.Validate()
	case c.ModelType == ModelTypeMixtral && c.Mixtral != nil:
		return c.Mixtral.Validate()
	}
	return fmt.Errorf("%w: model_type %q without its %s settings", ErrConfig, c.ModelType, c.ModelType)
}

func parseSwitch(f *fields) *SwitchConfig {
	c := &SwitchConfig{
		VocabSize:                    f.int("vocab_size", 32128),
		DModel:                       f.int("d_model", 768),
		DKV:                          f.int("d_kv", 64),
		DFF:                          f.int("d_ff", 2048),
		ExpertCapacity:               f.int("expert_capacity", 64),
		NumLayers:                    f.int("num_layers", 12),
		NumSparseEncoderLayers:       f.int("num_sparse_encoder_layers", 3),
		NumSparseDecoderLayers:       f.int("num_sparse_decoder_layers", 3),
		NumHeads:                     f.int("num_heads", 12),
		NumExperts:                   f.int("num_experts", 8),
		RouterBias:                   f.bool("router_bias", false),
		RelativeAttentionNumBuckets:  f.int("relative_attention_num_buckets", 32),
		RelativeAttentionMaxDistance: f.int("relative_attention_max_distance", 128),
		LayerNormEpsilon:             f.float("layer_norm_epsilon", 1e-6),
		DenseActFn:                   f.str("dense_act_fn", "relu"),
		PadTokenID:                   f.int("pad_token_id", 0),
		EOSTokenID:                   f.int("eos_token_id", 1),
		TieWordEmbeddings:            f.bool("tie_word_embeddings", true),
		TorchDtype:                   f.dtype(),
	}
	if f.null("pad_token_id") {
		c.PadTokenID = -1
	}
	if f.null("eos_token_id") {
		c.EOSTokenID = -1
	}
	c.NumDecoderLayers = f.int("num_decoder_layers", c.NumLayers)
	c.DecoderStartTokenID = f.int("decoder_start_token_id", c.PadTokenID)
	c.EncoderSparseStep = sparseStep(c.NumLayers, c.NumSparseEncoderLayers)
	c.DecoderSparseStep = sparseStep(c.NumDecoderLayers, c.NumSparseDecoderLayers)
	for _, s := range []struct {
		key     string
		derived int
	}{{"encoder_sparse_step", c.EncoderSparseStep}, {"decoder_sparse_step", c.DecoderSparseStep}} {
		if !f.present(s.key) {
			continue
		}
		if got := f.int(s.key, s.derived); got != s.derived && f.err == nil {
			f.err = fmt.Errorf("%w: %s is %d but num_layers/num_sparse_layers give %d", ErrConfig, s.key, got, s.derived)
		}
	}
	return c
}

// sparseStep mirrors SwitchTransformersConfig: layers // sparse, or 0 for no sparse layers.
func sparseStep(layers, sparse int) int {
	if sparse > 0 {
		return layers / sparse
	}
	return 0
}

// Validate checks that the config describes a model this project can run.
func (c *SwitchConfig) Validate() error {
	for _, p := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"d_model", c.DModel}, {"d_kv", c.DKV}, {"d_ff", c.DFF},
		{"num_layers", c.NumLayers}, {"num_decoder_layers", c.NumDecoderLayers}, {"num_heads", c.NumHeads},
		{"num_experts", c.NumExperts}, {"expert_capacity", c.ExpertCapacity},
		{"relative_attention_num_buckets", c.RelativeAttentionNumBuckets},
		{"relative_attention_max_distance", c.RelativeAttentionMaxDistance},
	} {
		if p.v <= 0 {
			return fmt.Errorf("%w: %s is %d, must be positive", ErrConfig, p.name, p.v)
		}
	}
	if c.NumSparseEncoderLayers < 0 || c.NumSparseEncoderLayers > c.NumLayers {
		return fmt.Errorf("%w: num_sparse_encoder_layers is %d, must be in [0, num_layers=%d]", ErrConfig, c.NumSparseEncoderLayers, c.NumLayers)
	}
	if c.NumSparseDecoderLayers < 0 || c.NumSparseDecoderLayers > c.NumDecoderLayers {
		return fmt.Errorf("%w: num_sparse_decoder_layers is %d, must be in [0, num_decoder_layers=%d]", ErrConfig, c.NumSparseDecoderLayers, c.NumDecoderLayers)
	}
	if want := sparseStep(c.NumLayers, c.NumSparseEncoderLayers); c.EncoderSparseStep != want {
		return fmt.Errorf("%w: encoder_sparse_step is %d, num_layers/num_sparse_encoder_layers give %d", ErrConfig, c.EncoderSparseStep, want)
	}
	if want := sparseStep(c.NumDecoderLayers, c.NumSparseDecoderLayers); c.DecoderSparseStep != want {
		return fmt.Errorf("%w: decoder_sparse_step is %d, num_decoder_layers/num_sparse_decoder_layers give %d", ErrConfig, c.DecoderSparseStep, want)
	}
	if !(c.LayerNormEpsilon > 0) || math.IsInf(c.LayerNormEpsilon, 0) {
		return fmt.Errorf("%w: layer_norm_epsilon is %g, must be positive", ErrConfig, c.LayerNormEpsilon)
	}
	if c.DenseActFn != "relu" {
		return fmt.Errorf("%w: dense_act_fn %q (only \"relu\")", ErrUnsupported, c.DenseActFn)
	}
	if c.RouterBias {
		return fmt.Errorf("%w: router_bias true", ErrUnsupported)
	}
	if c.DecoderStartTokenID < 0 || c.DecoderStartTokenID >= c.VocabSize {
		return fmt.Errorf("%w: decoder_start_token_id %d is not a token id (vocab_size %d)", ErrConfig, c.DecoderStartTokenID, c.VocabSize)
	}
	for _, t := range []struct {
		name string
		v    int
	}{{"eos_token_id", c.EOSTokenID}, {"pad_token_id", c.PadTokenID}} {
		if t.v < -1 || t.v >= c.VocabSize {
			return fmt.Errorf("%w: %s %d is not a token id (vocab_size %d)", ErrConfig, t.name, t.v, c.VocabSize)
		}
	}
	return nil
}

// IsSparse reports whether block (0-based) of the encoder or decoder stack is a sparse (MoE)
// block: HF's rule step > 0 && (block%step == 1 || step == 1).
func (c *SwitchConfig) IsSparse(block int, decoder bool) bool {
	step := c.EncoderSparseStep
	if decoder {
		step = c.DecoderSparseStep
	}
	return step > 0 && (block%step == 1 || step == 1)
}

// NumBlocks returns the number of blocks of the encoder (decoder=false) or decoder stack.
func (c *SwitchConfig) NumBlocks(decoder bool) int {
	if decoder {
		return c.NumDecoderLayers
	}
	return c.NumLayers
}

func parseMixtral(f *fields) *MixtralConfig {
	c := &MixtralConfig{
		VocabSize:             f.int("vocab_size", 32000),
		HiddenSize:            f.int("hidden_size", 4096),
		IntermediateSize:      f.int("intermediate_size", 14336),
		NumHiddenLayers:       f.int("num_hidden_layers", 32),
		NumAttentionHeads:     f.int("num_attention_heads", 32),
		MaxPositionEmbeddings: f.int("max_position_embeddings", 4096*32),
		RMSNormEps:            f.float("rms_norm_eps", 1e-5),
		PadTokenID:            f.int("pad_token_id", -1),
		BOSTokenID:            f.int("bos_token_id", 1),
		TieWordEmbeddings:     f.bool("tie_word_embeddings", false),
		RopeTheta:             f.float("rope_theta", 1e6),
		SlidingWindow:         f.int("sliding_window", 0),
		NumExpertsPerTok:      f.int("num_experts_per_tok", 2),
		NumLocalExperts:       f.int("num_local_experts", 8),
		HiddenAct:             f.str("hidden_act", "silu"),
		TorchDtype:            f.dtype(),
	}
	c.NumKeyValueHeads = f.int("num_key_value_heads", 8)
	if f.null("num_key_value_heads") {
		c.NumKeyValueHeads = c.NumAttentionHeads // HF: None means multi-head attention
	}
	if f.null("bos_token_id") {
		c.BOSTokenID = -1
	}
	c.HeadDim = f.int("head_dim", 0)
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	c.EOSTokenIDs = f.intOrList("eos_token_id", []int{2})
	c.EOSTokenID = -1
	if len(c.EOSTokenIDs) > 0 {
		c.EOSTokenID = c.EOSTokenIDs[0]
	}
	if f.present("rope_scaling") && !f.null("rope_scaling") && f.err == nil {
		f.err = fmt.Errorf("%w: rope_scaling %s (only null)", ErrUnsupported, compact(f.raw["rope_scaling"]))
	}
	// transformers v5 layout: {"rope_parameters": {"rope_type": "default", "rope_theta": ...}}.
	if f.present("rope_parameters") && !f.null("rope_parameters") && f.err == nil {
		var rp map[string]json.RawMessage
		if err := json.Unmarshal(f.raw["rope_parameters"], &rp); err != nil {
			f.err = fmt.Errorf("%w: rope_parameters: %w", ErrConfig, err)
			return c
		}
		sub := fields{raw: rp}
		if typ := sub.str("rope_type", "default"); typ != "default" && sub.err == nil {
			sub.err = fmt.Errorf("%w: rope_parameters.rope_type %q (only \"default\")", ErrUnsupported, typ)
		}
		c.RopeTheta = sub.float("rope_theta", c.RopeTheta)
		f.err = sub.err
	}
	return c
}

func compact(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// Validate checks that the config describes a model this project can run.
func (c *MixtralConfig) Validate() error {
	for _, p := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"head_dim", c.HeadDim},
		{"num_local_experts", c.NumLocalExperts}, {"num_experts_per_tok", c.NumExpertsPerTok},
		{"max_position_embeddings", c.MaxPositionEmbeddings},
	} {
		if p.v <= 0 {
			return fmt.Errorf("%w: %s is %d, must be positive", ErrConfig, p.name, p.v)
		}
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("%w: num_attention_heads %d is not a multiple of num_key_value_heads %d", ErrConfig, c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.NumExpertsPerTok > c.NumLocalExperts {
		return fmt.Errorf("%w: num_experts_per_tok %d exceeds num_local_experts %d", ErrConfig, c.NumExpertsPerTok, c.NumLocalExperts)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("%w: head_dim %d must be even for rotary embeddings", ErrConfig, c.HeadDim)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		return fmt.Errorf("%w: rms_norm_eps is %g, must be positive", ErrConfig, c.RMSNormEps)
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("%w: rope_theta is %g, must be positive", ErrConfig, c.RopeTheta)
	}
	if c.SlidingWindow < 0 {
		return fmt.Errorf("%w: sliding_window is %d, must be positive or null", ErrConfig, c.SlidingWindow)
	}
	if c.HiddenAct != "silu" {
		return fmt.Errorf("%w: hidden_act %q (only \"silu\")", ErrUnsupported, c.HiddenAct)
	}
	ids := append([]int{c.BOSTokenID, c.PadTokenID}, c.EOSTokenIDs...)
	for _, id := range ids {
		if id < -1 || id >= c.VocabSize {
			return fmt.Errorf("%w: token id %d out of range (vocab_size %d)", ErrConfig, id, c.VocabSize)
		}
	}
	return nil
}

// fields reads typed values from a config object; the first type error is kept in err.
type fields struct {
	raw map[string]json.RawMessage
	err error
}

func (f *fields) present(key string) bool { _, ok := f.raw[key]; return ok }

func (f *fields) null(key string) bool {
	v, ok := f.raw[key]
	return ok && string(bytes.TrimSpace(v)) == "null"
}

func (f *fields) fail(key string, v json.RawMessage, want string) {
	if f.err == nil {
		f.err = fmt.Errorf("%w: %s is %s, want %s", ErrConfig, key, compact(v), want)
	}
}

// value returns the raw value, or nil when absent or null.
func (f *fields) value(key string) json.RawMessage {
	if !f.present(key) || f.null(key) {
		return nil
	}
	return f.raw[key]
}

func (f *fields) int(key string, def int) int {
	v := f.value(key)
	if v == nil {
		return def
	}
	n, ok := parseInt(v)
	if !ok {
		f.fail(key, v, "an integer")
		return def
	}
	return n
}

// parseInt accepts JSON integers, and floats with an integral value (e.g. 64.0).
func parseInt(v json.RawMessage) (int, bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || v[0] == '"' { // json.Number would accept a quoted number
		return 0, false
	}
	var num json.Number
	if err := json.Unmarshal(v, &num); err != nil {
		return 0, false
	}
	if i, err := strconv.ParseInt(string(num), 10, 0); err == nil {
		return int(i), true
	}
	fl, err := num.Float64()
	if err != nil || fl != math.Trunc(fl) || math.Abs(fl) > 1<<53 {
		return 0, false
	}
	return int(fl), true
}

func (f *fields) float(key string, def float64) float64 {
	v := f.value(key)
	if v == nil {
		return def
	}
	var x float64
	if err := json.Unmarshal(v, &x); err != nil {
		f.fail(key, v, "a number")
		return def
	}
	return x
}

func (f *fields) bool(key string, def bool) bool {
	v := f.value(key)
	if v == nil {
		return def
	}
	var b bool
	if err := json.Unmarshal(v, &b); err != nil {
		f.fail(key, v, "true or false")
		return def
	}
	return b
}

func (f *fields) str(key, def string) string {
	v := f.value(key)
	if v == nil {
		return def
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		f.fail(key, v, "a string")
		return def
	}
	return s
}

func (f *fields) strList(key string) []string {
	v := f.value(key)
	if v == nil {
		return nil
	}
	var s []string
	if err := json.Unmarshal(v, &s); err != nil {
		f.fail(key, v, "a list of strings")
		return nil
	}
	return s
}

// intOrList reads an int, a list of ints, or null (→ empty).
func (f *fields) intOrList(key string, def []int) []int {
	if !f.present(key) {
		return def
	}
	v := f.value(key)
	if v == nil {
		return []int{}
	}
	if n, ok := parseInt(v); ok {
		return []int{n}
	}
	var list []json.RawMessage
	if err := json.Unmarshal(v, &list); err != nil {
		f.fail(key, v, "an integer or a list of integers")
		return def
	}
	out := make([]int, 0, len(list))
	for _, e := range list {
		n, ok := parseInt(e)
		if !ok {
			f.fail(key, v, "an integer or a list of integers")
			return def
		}
		out = append(out, n)
	}
	return out
}

// dtype reads torch_dtype, or "dtype" as newer transformers write it.
func (f *fields) dtype() string {
	if f.value("torch_dtype") != nil {
		return f.str("torch_dtype", "")
	}
	return f.str("dtype", "")
}
