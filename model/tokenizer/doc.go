// Package tokenizer turns text into the token ids of a served model and back, from the tokenizer
// files of its checkpoint directory: HF's tokenizer.json (BPE with byte fallback as Mistral and
// Mixtral use it, Unigram as T5 uses it) or a SentencePiece model (tokenizer.model, spiece.model),
// with the special and added tokens and the chat template of tokenizer_config.json.
//
// Data flow: Load picks the file and builds a Tokenizer. Encode cuts the text at added tokens
// ("<s>", "[INST]", "<extra_id_0>"), normalizes each span (SentencePiece's normalizer with its
// precompiled charsmap, or tokenizer.json's normalizer and pre-tokenizer), segments it (BPE merges
// or the Unigram Viterbi path; characters outside the vocabulary become byte pieces or the unknown
// piece) and adds BOS/EOS as configured. Decode and Stream (one id at a time, whole characters
// only) reverse it with the reference's rules for spaces and byte pieces.
//
// Everything is implemented here on the standard library and protowire; the Go libraries the
// issue named fall short for these models (see spmodel.go and hfjson.go). The tests compare ids
// and decodings exactly with the reference SentencePiece on real tokenizer files.
package tokenizer
