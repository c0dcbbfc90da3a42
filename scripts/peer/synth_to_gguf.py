#!/usr/bin/env python3
"""Peer measurement: write a `pregate synth --arch mixtral` checkpoint as a GGUF for llama.cpp.

llama.cpp's convert_hf_to_gguf.py needs a tokenizer, and a synthetic checkpoint has none, so this
writes the GGUF with llama.cpp's own gguf-py directly, doing what the converter does for
MixtralForCausalLM (conversion/llama.py, LlamaModel):
- arch "llama" with expert_count / expert_used_count;
- Q and K rows permuted from HF's rotate-half RoPE layout to GGML's interleaved one
  (LlamaModel.permute: per head, rows [0..d/2) and [d/2..d) are interleaved);
- the experts' w1/w3/w2 stacked into 3-D ffn_gate_exps / ffn_up_exps / ffn_down_exps;
- norms and the router (ffn_gate_inp) in float32, every other matrix in the checkpoint's dtype
  (f32 or bf16, bits copied unchanged).
The vocabulary is a dummy of the checkpoint's vocab_size ("<unk>", "<s>", "</s>", the 256 byte
tokens, then "t<i>"), tokenizer model "llama", enough for llama-bench and for token-id prompts.

    PYTHONPATH=/path/to/llama.cpp/gguf-py python3 scripts/peer/synth_to_gguf.py DIR OUT.gguf

gguf-py ships in llama.cpp's repository (it is not a dependency of this project); it needs numpy.
"""
import argparse
import json
import os
import sys

import numpy as np

from safetensors_np import open_checkpoint

try:
    import gguf
except ImportError:
    sys.exit("synth_to_gguf: gguf-py not found: put llama.cpp's gguf-py directory on PYTHONPATH")


def to_f32(arr, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    return (arr.astype(np.uint32) << 16).view(np.float32)


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf's LlamaModel.permute: HF rotate-half rows -> GGML interleaved rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="checkpoint directory (config.json + safetensors) of pregate synth --arch mixtral")
    ap.add_argument("out", help="GGUF file to write")
    args = ap.parse_args()

    try:
        with open(os.path.join(args.dir, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"synth_to_gguf: {args.dir}: config.json: {e}")
    if cfg.get("model_type") != "mixtral":
        sys.exit(f"synth_to_gguf: {args.dir}: model_type {cfg.get('model_type')!r} (want mixtral)")
    t = open_checkpoint(args.dir)
    dtypes = {d for _, d in t.values()}
    if len(dtypes) != 1:
        sys.exit(f"synth_to_gguf: mixed dtypes {sorted(dtypes)}")
    bf16 = dtypes == {"BF16"}

    n_layer = cfg["num_hidden_layers"]
    n_head, n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    n_expert = cfg["num_local_experts"]
    vocab = cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("pregate-synth-mixtral")
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(n_expert)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    if vocab < len(tokens) + 1:
        sys.exit(f"synth_to_gguf: vocab_size {vocab} is below the dummy vocabulary's {len(tokens) + 1}")
    tokens += [f"t{i}" for i in range(len(tokens), vocab)]
    types += [gguf.TokenType.NORMAL] * (vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_bos_token_id(cfg.get("bos_token_id") or 1)
    w.add_eos_token_id(cfg.get("eos_token_id") or 2)
    w.add_add_bos_token(False)  # prompts are given as ids, exactly what pregate generate gets

    # (gguf name, its shape, producer of the numpy array to store, checkpoint names it reads);
    # matrices keep the checkpoint's dtype.
    plan = []

    def mat(gname, hf, fn=None):
        plan.append((gname, lambda: t[hf][0].shape, lambda: t[hf][0] if fn is None else fn(t[hf][0]), [hf]))

    def f32(gname, hf):
        plan.append((gname, lambda: t[hf][0].shape, lambda: to_f32(*t[hf]), [hf]))

    def experts(gname, wid, bid):
        names = [f"model.layers.{bid}.block_sparse_moe.experts.{x}.{wid}.weight" for x in range(n_expert)]
        plan.append((gname, lambda: (n_expert,) + t[names[0]][0].shape,
                     lambda: np.stack([t[n][0] for n in names], axis=0), names))

    mat("token_embd.weight", "model.embed_tokens.weight")
    for i in range(n_layer):
        p = f"model.layers.{i}."
        f32(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight")
        mat(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", lambda a: permute(a, n_head, n_head))
        mat(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", lambda a: permute(a, n_head, n_head_kv))
        mat(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight")
        mat(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight")
        f32(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight")
        f32(f"blk.{i}.ffn_gate_inp.weight", p + "block_sparse_moe.gate.weight")
        experts(f"blk.{i}.ffn_gate_exps.weight", "w1", i)
        experts(f"blk.{i}.ffn_down_exps.weight", "w2", i)
        experts(f"blk.{i}.ffn_up_exps.weight", "w3", i)
    f32("output_norm.weight", "model.norm.weight")
    mat("output.weight", "lm_head.weight")

    missing = sorted({n for _, _, _, names in plan for n in names} - t.keys())
    if missing:
        sys.exit(f"synth_to_gguf: {args.dir}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")

    def kind(gname):
        return gname.endswith(("_norm.weight", "ffn_gate_inp.weight"))

    for gname, shape_of, _, _ in plan:
        shape = shape_of()
        if kind(gname) or not bf16:
            nbytes = int(np.prod(shape)) * 4
            w.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes)
        else:
            nbytes = int(np.prod(shape)) * 2
            w.add_tensor_info(gname, shape, np.dtype(np.uint16), nbytes, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, produce, _ in plan:
        w.write_tensor_data(np.ascontiguousarray(produce()))
    w.close()
    print(f"synth_to_gguf: wrote {args.out} ({len(plan)} tensors, {'bf16' if bf16 else 'f32'})")


if __name__ == "__main__":
    main()
