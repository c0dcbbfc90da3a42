package synth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/pregate/pregate/model"
)

// marshalConfig renders cfg as HF's save_pretrained writes config.json (json.dumps(indent=2,
// sort_keys=True) plus a newline, Python float formatting), with the key set of the fixtures
// (no transformers_version).
func marshalConfig(cfg *model.Config) ([]byte, error) {
	var kv map[string]any
	switch {
	case cfg.Switch != nil:
		kv = switchKeys(cfg.Switch)
	case cfg.Mixtral != nil:
		kv = mixtralKeys(cfg.Mixtral)
	default:
		return nil, fmt.Errorf("%w: config without architecture settings", ErrOptions)
	}
	kv["model_type"] = cfg.ModelType
	kv["architectures"] = slices.Clone(cfg.Architectures)
	var buf bytes.Buffer
	if err := writeJSON(&buf, kv, 0); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

func tokenID(id int) any {
	if id < 0 {
		return nil
	}
	return id
}

func switchKeys(s *model.SwitchConfig) map[string]any {
	return map[string]any{
		"add_cross_attention":             false,
		"add_router_probs":                false,
		"bos_token_id":                    nil,
		"d_ff":                            s.DFF,
		"d_kv":                            s.DKV,
		"d_model":                         s.DModel,
		"decoder_sparse_step":             s.DecoderSparseStep,
		"decoder_start_token_id":          tokenID(s.DecoderStartTokenID),
		"dense_act_fn":                    s.DenseActFn,
		"dropout_rate":                    0.1,
		"encoder_sparse_step":             s.EncoderSparseStep,
		"eos_token_id":                    tokenID(s.EOSTokenID),
		"expert_capacity":                 s.ExpertCapacity,
		"feed_forward_proj":               s.DenseActFn,
		"initializer_factor":              1.0,
		"is_decoder":                      false,
		"is_encoder_decoder":              true,
		"layer_norm_epsilon":              s.LayerNormEpsilon,
		"num_decoder_layers":              s.NumDecoderLayers,
		"num_experts":                     s.NumExperts,
		"num_heads":                       s.NumHeads,
		"num_layers":                      s.NumLayers,
		"num_sparse_decoder_layers":       s.NumSparseDecoderLayers,
		"num_sparse_encoder_layers":       s.NumSparseEncoderLayers,
		"pad_token_id":                    tokenID(s.PadTokenID),
		"relative_attention_max_distance": s.RelativeAttentionMaxDistance,
		"relative_attention_num_buckets":  s.RelativeAttentionNumBuckets,
		"router_aux_loss_coef":            0.001,
		"router_bias":                     s.RouterBias,
		"router_dtype":                    "float32",
		"router_ignore_padding_tokens":    false,
		"router_jitter_noise":             0.0,
		"router_z_loss_coef":              0.001,
		"tie_word_embeddings":             s.TieWordEmbeddings,
		"torch_dtype":                     s.TorchDtype,
		"use_cache":                       true,
		"vocab_size":                      s.VocabSize,
	}
}

func mixtralKeys(m *model.MixtralConfig) map[string]any {
	var headDim, sliding, eos any
	if m.HeadDim != m.HiddenSize/m.NumAttentionHeads {
		headDim = m.HeadDim
	}
	if m.SlidingWindow > 0 {
		sliding = m.SlidingWindow
	}
	switch len(m.EOSTokenIDs) {
	case 0:
		eos = tokenID(m.EOSTokenID)
	case 1:
		eos = m.EOSTokenIDs[0]
	default:
		eos = slices.Clone(m.EOSTokenIDs)
	}
	return map[string]any{
		"attention_dropout":       0.0,
		"bos_token_id":            tokenID(m.BOSTokenID),
		"eos_token_id":            eos,
		"head_dim":                headDim,
		"hidden_act":              m.HiddenAct,
		"hidden_size":             m.HiddenSize,
		"initializer_range":       0.02,
		"intermediate_size":       m.IntermediateSize,
		"max_position_embeddings": m.MaxPositionEmbeddings,
		"num_attention_heads":     m.NumAttentionHeads,
		"num_experts_per_tok":     m.NumExpertsPerTok,
		"num_hidden_layers":       m.NumHiddenLayers,
		"num_key_value_heads":     m.NumKeyValueHeads,
		"num_local_experts":       m.NumLocalExperts,
		"output_router_logits":    false,
		"pad_token_id":            tokenID(m.PadTokenID),
		"rms_norm_eps":            m.RMSNormEps,
		"rope_scaling":            nil,
		"rope_theta":              m.RopeTheta,
		"router_aux_loss_coef":    0.001,
		"router_jitter_noise":     0.0,
		"sliding_window":          sliding,
		"tie_word_embeddings":     m.TieWordEmbeddings,
		"torch_dtype":             m.TorchDtype,
		"use_cache":               true,
		"vocab_size":              m.VocabSize,
	}
}

// writeJSON writes v like Python's json.dumps(v, indent=2, sort_keys=True) at the given depth.
func writeJSON(buf *bytes.Buffer, v any, depth int) error {
	indent := func(d int) { buf.WriteString(strings.Repeat("  ", d)) }
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case int:
		buf.WriteString(strconv.Itoa(x))
	case int64:
		buf.WriteString(strconv.FormatInt(x, 10))
	case float64:
		s, err := pyFloat(x)
		if err != nil {
			return err
		}
		buf.WriteString(s)
	case string:
		b, err := json.Marshal(x) // ASCII keys and values only here, so this matches Python
		if err != nil {
			return err
		}
		buf.Write(b)
	case []string:
		items := make([]any, len(x))
		for i, s := range x {
			items[i] = s
		}
		return writeJSON(buf, items, depth)
	case []int:
		items := make([]any, len(x))
		for i, n := range x {
			items[i] = n
		}
		return writeJSON(buf, items, depth)
	case []any:
		if len(x) == 0 {
			buf.WriteString("[]")
			return nil
		}
		buf.WriteString("[\n")
		for i, e := range x {
			indent(depth + 1)
			if err := writeJSON(buf, e, depth+1); err != nil {
				return err
			}
			if i < len(x)-1 {
				buf.WriteByte(',')
			}
			buf.WriteByte('\n')
		}
		indent(depth)
		buf.WriteByte(']')
	case map[string]any:
		if len(x) == 0 {
			buf.WriteString("{}")
			return nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf.WriteString("{\n")
		for i, k := range keys {
			indent(depth + 1)
			if err := writeJSON(buf, k, depth+1); err != nil {
				return err
			}
			buf.WriteString(": ")
			if err := writeJSON(buf, x[k], depth+1); err != nil {
				return err
			}
			if i < len(keys)-1 {
				buf.WriteByte(',')
			}
			buf.WriteByte('\n')
		}
		indent(depth)
		buf.WriteByte('}')
	default:
		return fmt.Errorf("synth: cannot encode %T in config.json", v)
	}
	return nil
}

// pyFloat formats f as Python's repr: shortest round-trip digits, scientific notation when the
// decimal exponent is < -4 or >= 16, and always a '.' or an exponent ("10000.0", "1e-06").
func pyFloat(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("%w: %v is not valid JSON", ErrOptions, f)
	}
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0", nil
		}
		return "0.0", nil
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // e.g. "1.5e-07"
	exp, err := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if err != nil {
		return "", err
	}
	if exp < -4 || exp >= 16 {
		return e, nil
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s, nil
}
