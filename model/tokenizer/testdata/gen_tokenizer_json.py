#!/usr/bin/python3
"""Writes tokenizer.json files next to the SentencePiece models, as HF transformers'
convert_slow_tokenizer does (LlamaConverter for Mistral's BPE, T5Converter for the Unigram model):
same vocabulary, merges extracted from the model as SentencePieceExtractor does, same normalizer,
pre-tokenizer, post-processor and decoder JSON as the hub's Mixtral-8x7B and T5 tokenizer.json.

HF's tokenizers library cannot be installed here (no PyPI); the tests check that the Go tokenizer
gives the same ids through tokenizer.json as through the SentencePiece model on the text set.
Run: /usr/bin/python3 model/tokenizer/testdata/gen_tokenizer_json.py
"""
import base64
import json
import os
from sentencepiece import sentencepiece_model_pb2 as pb

here = os.path.dirname(os.path.abspath(__file__))


def load(path):
    m = pb.ModelProto()
    with open(os.path.join(here, path), "rb") as f:
        m.ParseFromString(f.read())
    return m


def added(m):
    # Unknown and control pieces are HF added tokens, special.
    return [
        {"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, p in enumerate(m.pieces) if p.type in (2, 3)
    ]


def merges_of(m):
    # SentencePieceExtractor.extract with vocab_scores: every split of a piece into two pieces,
    # ordered by the merged piece's score (stable), then by the ids of the halves.
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    merges = []
    for i, p in enumerate(m.pieces):
        local = []
        for k in range(1, len(p.piece)):
            l, r = p.piece[:k], p.piece[k:]
            if l in vocab and r in vocab:
                local.append((l, r, p.score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)
    return [f"{l} {r}" for l, r, _ in merges]


def mistral():
    m = load("mistral/tokenizer.model")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added(m),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {p.piece: i for i, p in enumerate(m.pieces)}, "merges": merges_of(m)},
    }


def unigram():
    m = load("unigram/spiece.model")
    eos = m.pieces[m.trainer_spec.eos_id].piece
    meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added(m),
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(m.normalizer_spec.precompiled_charsmap).decode()},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": meta,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                           "special_tokens": {eos: {"id": eos, "ids": [m.trainer_spec.eos_id], "tokens": [eos]}}},
        "decoder": meta,
        "model": {"type": "Unigram", "unk_id": m.trainer_spec.unk_id, "byte_fallback": False,
                  "vocab": [[p.piece, p.score] for p in m.pieces]},
    }


for path, tj in [("mistral-json/tokenizer.json", mistral()), ("unigram-json/tokenizer.json", unigram())]:
    os.makedirs(os.path.join(here, os.path.dirname(path)), exist_ok=True)
    with open(os.path.join(here, path), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
