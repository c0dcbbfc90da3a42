package tokenizer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// spBytes serializes a small ModelProto: pieces (piece, type), a trainer spec and a normalizer spec.
func spBytes(pieces [][2]any, trainer, normalizer []byte) []byte {
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p[0].(string))
		m = protowire.AppendTag(m, 3, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p[1].(int)))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	if trainer != nil {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, trainer)
	}
	if normalizer != nil {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, normalizer)
	}
	return b
}

func varintField(num protowire.Number, v uint64) []byte {
	b := protowire.AppendTag(nil, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func TestMalformedSentencePiece(t *testing.T) {
	good, err := os.ReadFile("testdata/mistral/tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	basic := [][2]any{{"<unk>", 2}, {"<s>", 3}, {"</s>", 3}, {"a", 1}}
	charsmap := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte{200, 0, 0, 0, 1, 2})
	tests := []struct {
		name string
		give []byte
		want string
	}{
		{"truncated", good[:1000], "field"},
		{"not protobuf", []byte("this is a text file\n"), "protobuf"},
		{"no pieces", spBytes(nil, varintField(3, 2), nil), "no pieces"},
		{"word model", spBytes(basic, varintField(3, 3), nil), "unsupported: model type 3"},
		{"unk not unknown", spBytes([][2]any{{"a", 1}, {"<s>", 3}, {"</s>", 3}}, nil, nil), "unk_id 0"},
		{"bos out of range", spBytes(basic, varintField(41, 9), nil), "special id 9"},
		{"piece type", spBytes([][2]any{{"<unk>", 2}, {"x", 9}}, nil, nil), "unknown type 9"},
		{"byte fallback without bytes", spBytes(basic, varintField(35, 1), nil), "256"},
		{"charsmap size", spBytes(basic, nil, charsmap), "charsmap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokenizer.model")
			if err := os.WriteFile(path, tt.give, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadSentencePiece(path)
			if !errors.Is(err, ErrTokenizer) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrTokenizer naming %s and %q", err, path, tt.want)
			}
		})
	}
	// A well-formed model, built here: it loads and encodes.
	tok, err := newSentencePiece(spBytes(basic, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if ids, _ := tok.Encode("a a", false); len(ids) != 4 { // ▁ unknown, a, ▁ unknown, a
		t.Errorf("ids %v", ids)
	}
}

func TestMalformedTokenizerJSON(t *testing.T) {
	bpe := func(model string) string {
		return `{"model": ` + model + `}`
	}
	tests := []struct {
		name, give, want string
	}{
		{"not json", `{"model": `, "not tokenizer.json"},
		{"wordpiece", bpe(`{"type": "WordPiece", "vocab": {}}`), `unsupported: type "WordPiece"`},
		{"sparse ids", bpe(`{"type": "BPE", "vocab": {"a": 0, "b": 5}, "merges": []}`), "out of range"},
		{"merge outside vocab", bpe(`{"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}`), "merge 0"},
		{"bad merge", bpe(`{"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}`), "not two pieces"},
		{"unk missing", bpe(`{"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}`), "unk_token"},
		{"bytes missing", bpe(`{"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": true}`), "<0x00>"},
		{"suffix", bpe(`{"type": "BPE", "vocab": {"a": 0}, "merges": [], "end_of_word_suffix": "</w>"}`), "unsupported: BPE with continuing_subword_prefix or end_of_word_suffix"},
		{"unigram unk", bpe(`{"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": 4}`), "unk_id"},
		{"unigram vocab", bpe(`{"type": "Unigram", "vocab": [["a", "x"]], "unk_id": 0}`), "vocab entry 0"},
		{"normalizer", `{"normalizer": {"type": "NFD"}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, `unsupported: type "NFD"`},
		{"charsmap", `{"normalizer": {"type": "Precompiled", "precompiled_charsmap": "!!"}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, "base64"},
		{"pre-tokenizer", `{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, `pre_tokenizer: tokenizer: unsupported: type "ByteLevel"`},
		{"decoder", `{"decoder": {"type": "WordPiece"}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, `unsupported: type "WordPiece"`},
		{"regex", `{"normalizer": {"type": "Replace", "pattern": {"Regex": "("}, "content": ""}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, "Replace pattern"},
		{"template", `{"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {}}, "model": {"type": "Unigram", "vocab": [["a", -1]], "unk_id": 0}}`, "<s>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokenizer.json")
			if err := os.WriteFile(path, []byte(tt.give), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadJSON(path)
			if !errors.Is(err, ErrTokenizer) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrTokenizer naming %s and %q", err, path, tt.want)
			}
			if want := strings.Contains(tt.want, "unsupported"); errors.Is(err, ErrUnsupported) != want {
				t.Errorf("errors.Is(%v, ErrUnsupported) = %v, want %v", err, !want, want)
			}
		})
	}
}

func TestMalformedConfig(t *testing.T) {
	for _, tt := range []struct{ name, give, want string }{
		{"not json", `{`, "unexpected end"},
		{"token", `{"bos_token": 7}`, "neither a string"},
		{"chat template", `{"chat_template": 3}`, "chat_template"},
		{"added id", `{"added_tokens_decoder": {"x": {"content": "<a>"}}}`, `id "x"`},
		{"added clash", `{"added_tokens_decoder": {"3": {"content": "<a>"}}}`, "which is"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyFile(t, "testdata/unigram/spiece.model", dir, "spiece.model")
			writeFile(t, dir, "tokenizer_config.json", tt.give)
			_, err := Load(dir)
			if !errors.Is(err, ErrTokenizer) || !strings.Contains(err.Error(), "tokenizer_config.json") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrTokenizer naming tokenizer_config.json and %q", err, tt.want)
			}
		})
	}
}

func TestEncodeRejectsInvalidUTF8(t *testing.T) {
	tok, err := LoadSentencePiece("testdata/unigram/spiece.model")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Encode("a\xffb", false); err == nil {
		t.Error("invalid UTF-8 encoded without error")
	}
}
