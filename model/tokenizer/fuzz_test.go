package tokenizer

import (
	"errors"
	"os"
	"testing"
)

// exercise encodes and decodes a few texts with a tokenizer that loaded: no panic, whatever the file.
func exercise(t *testing.T, tok *Tokenizer) {
	for _, text := range []string{"", "Hello  world", "日本 🤖\t<s>x", "\u2581a"} {
		ids, err := tok.Encode(text, true)
		if err != nil {
			t.Fatalf("Encode(%q): %v", text, err)
		}
		tok.Decode(ids, false)
		s := tok.NewStream()
		for _, id := range ids {
			s.Next(id)
		}
		s.Flush()
	}
	tok.Decode([]int{-1, 0, 1, 1 << 30}, true)
}

// FuzzParseSentencePiece loads any bytes as a SentencePiece model: a Tokenizer or an error, never
// a panic. Seeds: the test models and small hand-built ones.
func FuzzParseSentencePiece(f *testing.F) {
	for _, path := range []string{"testdata/unigram/spiece.model"} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	basic := [][2]any{{"<unk>", 2}, {"<s>", 3}, {"</s>", 3}, {"a", 1}, {"\u2581a", 1}, {"<0x41>", 6}}
	f.Add(spBytes(basic, nil, nil))
	f.Add(spBytes(basic, varintField(3, 2), nil))
	f.Add(spBytes(basic, varintField(35, 1), varintField(4, 0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := newSentencePiece(b)
		if err != nil {
			return
		}
		exercise(t, tok)
	})
}

// FuzzParseTokenizerJSON loads any bytes as tokenizer.json: a Tokenizer or an error, never a panic.
// Seeds: small files with the components of Mistral's and T5's (the real ones are too large for a
// fuzzer to mutate usefully).
func FuzzParseTokenizerJSON(f *testing.F) {
	f.Add([]byte(`{"added_tokens": [{"id": 5, "content": "<s>", "special": true}],
		"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
		"decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
		"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}], "special_tokens": {"<s>": {"ids": [5]}}},
		"model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "▁": 4}, "merges": ["a b"], "unk_token": "<unk>", "fuse_unk": true}}`))
	f.Add([]byte(`{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}]},
		"decoder": {"type": "Metaspace", "replacement": "▁"}, "model": {"vocab": [["<unk>", 0], ["▁a", -1.5], ["a", -2]], "unk_id": 0}}`))
	f.Add([]byte(`{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Precompiled", "precompiled_charsmap": "CAAAAAAAAAAAAAAA"},
		{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}, {"type": "Strip", "strip_left": true}, {"type": "Lowercase"}]},
		"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
		"model": {"type": "Unigram", "vocab": [["<unk>", 0], ["<0x41>", -3], ["▁a", -1.5]], "unk_id": 0, "byte_fallback": false}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := newHFJSON(b)
		if err != nil {
			if errors.Is(err, ErrTokenizer) {
				t.Fatalf("newHFJSON wraps ErrTokenizer itself: %v", err) // loadFile adds the file name
			}
			return
		}
		exercise(t, tok)
	})
}
