#!/usr/bin/env python3
"""Peer measurement: batch-1 greedy decode tokens/s of the same checkpoint in plain PyTorch.

This is the per-token work of HuggingFace's SwitchTransformers / Mixtral decode with a KV cache
(F.linear on the checkpoint's weights, float32), written as a bare loop without HF's module,
cache-object and generate() overhead, so it bounds from above what HF transformers reaches on the
same PyTorch. It reads a `pregate synth` checkpoint directly (no safetensors package needed).

    python3 scripts/peer/torch_decode.py DIR --threads 1 [--prompt 32 --new 64]
Prints one JSON line: {"model":…, "threads":…, "decode_tokens_per_second":…, "torch":…}.
"""
import argparse, json, os, time

import torch
import torch.nn.functional as F

from safetensors_np import open_checkpoint


def load(dirname):
    return {name: torch.from_numpy(arr) for name, (arr, _) in open_checkpoint(dirname, dtypes=("F32",)).items()}


def rms(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def switch_decoder(cfg, W, prompt_len, new_tokens):
    d, H, dkv = cfg["d_model"], cfg["num_heads"], cfg["d_kv"]
    L, step, eps = cfg["num_decoder_layers"], cfg["decoder_sparse_step"], cfg["layer_norm_epsilon"]
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(prompt_len, d, generator=g)  # stands in for the encoder output
    p = lambda b, s: f"decoder.block.{b}.layer.{s}."
    cross = [(F.linear(enc, W[p(b, 1) + "EncDecAttention.k.weight"]).view(prompt_len, H, dkv).transpose(0, 1),
              F.linear(enc, W[p(b, 1) + "EncDecAttention.v.weight"]).view(prompt_len, H, dkv).transpose(0, 1)) for b in range(L)]
    rel = W["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    cache = [(torch.empty(H, 0, dkv), torch.empty(H, 0, dkv)) for _ in range(L)]
    shared = W["shared.weight"]

    def step_fn(tok, pos):
        h = shared[tok].view(1, d)
        bias = rel[torch.clamp(torch.arange(pos + 1) - pos, min=-15).neg()].T.unsqueeze(1)  # [H,1,pos+1]
        for b in range(L):
            n = rms(h, W[p(b, 0) + "layer_norm.weight"], eps)
            q = F.linear(n, W[p(b, 0) + "SelfAttention.q.weight"]).view(H, 1, dkv)
            k = F.linear(n, W[p(b, 0) + "SelfAttention.k.weight"]).view(H, 1, dkv)
            v = F.linear(n, W[p(b, 0) + "SelfAttention.v.weight"]).view(H, 1, dkv)
            K, V = torch.cat([cache[b][0], k], 1), torch.cat([cache[b][1], v], 1)
            cache[b] = (K, V)
            a = torch.softmax(q @ K.transpose(1, 2) + bias, -1) @ V
            h = h + F.linear(a.reshape(1, H * dkv), W[p(b, 0) + "SelfAttention.o.weight"])
            n = rms(h, W[p(b, 1) + "layer_norm.weight"], eps)
            q = F.linear(n, W[p(b, 1) + "EncDecAttention.q.weight"]).view(H, 1, dkv)
            a = torch.softmax(q @ cross[b][0].transpose(1, 2), -1) @ cross[b][1]
            h = h + F.linear(a.reshape(1, H * dkv), W[p(b, 1) + "EncDecAttention.o.weight"])
            n = rms(h, W[p(b, 2) + "layer_norm.weight"], eps)
            if b % step == 1:
                probs = torch.softmax(F.linear(n, W[p(b, 2) + "mlp.router.classifier.weight"]), -1)
                pr, e = probs.max(-1)
                e = int(e)
                x = F.linear(torch.relu(F.linear(n, W[p(b, 2) + f"mlp.experts.expert_{e}.wi.weight"])), W[p(b, 2) + f"mlp.experts.expert_{e}.wo.weight"])
                h = h + pr * x
            else:
                h = h + F.linear(torch.relu(F.linear(n, W[p(b, 2) + "mlp.wi.weight"])), W[p(b, 2) + "mlp.wo.weight"])
        n = rms(h, W["decoder.final_layer_norm.weight"], eps) * d ** -0.5
        return int(F.linear(n, shared).argmax())

    return step_fn, 0


def mixtral(cfg, W, prompt_len, new_tokens):
    d, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // H
    L, eps, k_top = cfg["num_hidden_layers"], cfg["rms_norm_eps"], cfg["num_experts_per_tok"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    p = lambda b: f"model.layers.{b}."
    cache = [(torch.empty(KV, 0, hd), torch.empty(KV, 0, hd)) for _ in range(L)]

    def rot(x, cos, sin):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def step_fn(tok, pos):
        h = W["model.embed_tokens.weight"][tok].view(1, d)
        ang = pos * inv
        cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
        for b in range(L):
            n = rms(h, W[p(b) + "input_layernorm.weight"], eps)
            q = rot(F.linear(n, W[p(b) + "self_attn.q_proj.weight"]).view(H, 1, hd), cos, sin)
            k = rot(F.linear(n, W[p(b) + "self_attn.k_proj.weight"]).view(KV, 1, hd), cos, sin)
            v = F.linear(n, W[p(b) + "self_attn.v_proj.weight"]).view(KV, 1, hd)
            K, V = torch.cat([cache[b][0], k], 1), torch.cat([cache[b][1], v], 1)
            cache[b] = (K, V)
            Kr, Vr = K.repeat_interleave(H // KV, 0), V.repeat_interleave(H // KV, 0)
            a = torch.softmax(q @ Kr.transpose(1, 2) * hd ** -0.5, -1) @ Vr
            h = h + F.linear(a.reshape(1, H * hd), W[p(b) + "self_attn.o_proj.weight"])
            n = rms(h, W[p(b) + "post_attention_layernorm.weight"], eps)
            probs = torch.softmax(F.linear(n, W[p(b) + "block_sparse_moe.gate.weight"]), -1)
            w, idx = torch.topk(probs, k_top, -1)
            w = w / w.sum(-1, keepdim=True)
            out = torch.zeros_like(h)
            for j in range(k_top):
                e = int(idx[0, j])
                pe = p(b) + f"block_sparse_moe.experts.{e}."
                x = F.linear(F.silu(F.linear(n, W[pe + "w1.weight"])) * F.linear(n, W[pe + "w3.weight"]), W[pe + "w2.weight"])
                out = out + w[0, j] * x
            h = h + out
        n = rms(h, W["model.norm.weight"], eps)
        return int(F.linear(n, W["lm_head.weight"]).argmax())

    return step_fn, prompt_len


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.load(open(os.path.join(args.dir, "config.json")))
    W = load(args.dir)
    build = switch_decoder if cfg["model_type"] == "switch_transformers" else mixtral
    step, pos = build(cfg, W, args.prompt, args.new)
    with torch.inference_mode():
        # The decoder-only model's prompt is fed token by token (prefill is not timed).
        tok = 1
        for i in range(pos):
            step(100 + i, i)
        tok = step(tok, pos)
        t0 = time.perf_counter()
        for i in range(1, args.new):
            tok = step(tok, pos + i)
        dt = time.perf_counter() - t0
    print(json.dumps({"model": os.path.basename(args.dir.rstrip("/")), "threads": args.threads,
                      "decode_tokens_per_second": (args.new - 1) / dt, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
