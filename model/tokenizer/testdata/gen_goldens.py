#!/usr/bin/python3
"""Writes goldens.json: ids and decodings of texts.json by the reference SentencePiece.

Run with Debian's python3-sentencepiece (apt-get install python3-sentencepiece python3-protobuf):
    /usr/bin/python3 model/tokenizer/testdata/gen_goldens.py
Not run by the tests; its output is committed.
"""
import json
import os
import sentencepiece as spm

here = os.path.dirname(os.path.abspath(__file__))
texts = json.load(open(os.path.join(here, "texts.json"), encoding="utf-8"))
out = {"sentencepiece_version": spm.__version__, "texts": texts, "models": {}}
for name, path in [("mistral", "mistral/tokenizer.model"), ("unigram", "unigram/spiece.model"),
                   ("trained-unigram", "trained/unigram.model"), ("trained-bpe", "trained/bpe.model")]:
    sp = spm.SentencePieceProcessor(model_file=os.path.join(here, path))
    cases = []
    for t in texts:
        ids = sp.encode(t)
        cases.append({"ids": ids, "decoded": sp.decode(ids)})
    out["models"][name] = cases
with open(os.path.join(here, "goldens.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    f.write("\n")
