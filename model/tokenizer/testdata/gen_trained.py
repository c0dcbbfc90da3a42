#!/usr/bin/python3
"""Trains two small SentencePiece models (Unigram and BPE) with what the real models' files do not
exercise: user-defined symbols, byte fallback in a Unigram model, the nmt_nfkc charsmap with split
digits. The reference trainer is deterministic with one thread, so this rewrites the same files.

Run with Debian's python3-sentencepiece: /usr/bin/python3 model/tokenizer/testdata/gen_trained.py
(then gen_goldens.py). Not run by the tests; its output is committed.
"""
import io
import json
import os
import sentencepiece as spm

here = os.path.dirname(os.path.abspath(__file__))
texts = json.load(open(os.path.join(here, "texts.json"), encoding="utf-8"))
english = [t for t in texts if t.isascii()]
corpus = english * 20 + [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-Experts models route each token to the top two experts of every block.",
    "def main():\n    return <tool> ``` 42",
] * 50
os.makedirs(os.path.join(here, "trained"), exist_ok=True)
for model_type in ["unigram", "bpe"]:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=out, vocab_size=500, model_type=model_type,
        user_defined_symbols=["<tool>", "```", "\u2581def"], byte_fallback=True, num_threads=1,
        character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
        split_digits=True, minloglevel=2)
    with open(os.path.join(here, "trained", model_type + ".model"), "wb") as f:
        f.write(out.getvalue())
