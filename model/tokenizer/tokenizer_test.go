package tokenizer

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// copyFile copies testdata file src to dir/name.
func copyFile(t *testing.T, src, dir, name string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mistralDir is a checkpoint directory with Mistral's tokenizer.model and tokenizer_config.json
// as the hub's Mixtral-8x7B-Instruct has them (the chat template shortened).
func mistralDir(t *testing.T) string {
	dir := t.TempDir()
	copyFile(t, "testdata/mistral/tokenizer.model", dir, "tokenizer.model")
	writeFile(t, dir, "tokenizer_config.json", `{
  "add_bos_token": true, "add_eos_token": false,
  "added_tokens_decoder": {
    "0": {"content": "<unk>", "special": true}, "1": {"content": "<s>", "special": true},
    "2": {"content": "</s>", "special": true}},
  "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": null,
  "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
  "tokenizer_class": "LlamaTokenizer"}`)
	return dir
}

func TestLoadPicksTheFile(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // name in dir → testdata source
		want  string            // Piece(1)
	}{
		{"tokenizer.model", map[string]string{"tokenizer.model": "testdata/mistral/tokenizer.model"}, "<s>"},
		{"spiece.model", map[string]string{"spiece.model": "testdata/unigram/spiece.model"}, "<s>"},
		{"tokenizer.json first", map[string]string{"tokenizer.json": "testdata/unigram-json/tokenizer.json",
			"tokenizer.model": "testdata/mistral/tokenizer.model"}, "<s>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range tt.files {
				copyFile(t, src, dir, name)
			}
			tok, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.Piece(1); got != tt.want {
				t.Errorf("Piece(1) = %q, want %q", got, tt.want)
			}
			_, isJSON := tok.dec.(*hfDecoder)
			if wantJSON := tt.files["tokenizer.json"] != ""; isJSON != wantJSON {
				t.Errorf("loaded from tokenizer.json: %v, want %v", isJSON, wantJSON)
			}
		})
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("empty dir: %v, want ErrNoTokenizer", err)
	}
}

func TestMistralConfig(t *testing.T) {
	for _, tt := range []struct{ name, file string }{
		{"tokenizer.model", ""},
		{"tokenizer.json", "testdata/mistral-json/tokenizer.json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := mistralDir(t)
			if tt.file != "" {
				copyFile(t, tt.file, dir, "tokenizer.json")
			}
			tok, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if tok.BOS() != 1 || tok.EOS() != 2 || tok.UNK() != 0 || tok.Pad() != -1 || tok.VocabSize() != 32000 {
				t.Errorf("bos %d eos %d unk %d pad %d vocab %d", tok.BOS(), tok.EOS(), tok.UNK(), tok.Pad(), tok.VocabSize())
			}
			if !strings.Contains(tok.ChatTemplate(), "[INST]") {
				t.Errorf("chat template %q", tok.ChatTemplate())
			}
			// A rendered chat: "<s>" and "</s>" in the text are the special ids, BOS once.
			ids, err := tok.Encode("<s>[INST] Hi [/INST] Hello</s>", false)
			if err != nil {
				t.Fatal(err)
			}
			want := []int{1, 733, 16289, 28793, 15359, 733, 28748, 16289, 28793, 22557, 2}
			if !slices.Equal(ids, want) {
				t.Errorf("chat ids %v, want %v", ids, want)
			}
			if got := tok.Decode(ids, true); got != "[INST] Hi [/INST] Hello" {
				t.Errorf("Decode skipping special = %q", got)
			}
			// As HF's Llama tokenizers decode it: the space of "▁[" shows after a special token.
			if got := tok.Decode(ids, false); got != "<s> [INST] Hi [/INST] Hello</s>" {
				t.Errorf("Decode keeping special = %q", got)
			}
			ids, _ = tok.Encode("Hello", true)
			if !slices.Equal(ids, []int{1, 22557}) {
				t.Errorf("Encode(Hello, addSpecial) = %v, want [1 22557]", ids)
			}
		})
	}
}

func TestT5StyleConfig(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, "testdata/unigram/spiece.model", dir, "spiece.model")
	// T5's tokenizer_config.json: sentinel tokens above the vocabulary (100 in T5). T5's model has no
	// BOS, so EOS is appended by default; this model has one, so the config says what T5 does.
	writeFile(t, dir, "tokenizer_config.json", `{"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 3,
		"add_bos_token": false, "add_eos_token": true}`)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := tok.ID("<extra_id_0>"); id != 1002 {
		t.Errorf("<extra_id_0> = %d, want 1002", id)
	}
	if id, _ := tok.ID("<extra_id_2>"); id != 1000 {
		t.Errorf("<extra_id_2> = %d, want 1000", id)
	}
	if tok.Pad() != 1003 || !tok.IsSpecial(1003) {
		t.Errorf("<pad> (not in this model) = %d, special %v; want a new id 1003", tok.Pad(), tok.IsSpecial(1003))
	}
	ids, err := tok.Encode("a<extra_id_1>b", true)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := tok.Encode("a", false)
	b, _ := tok.Encode("b", false)
	want := slices.Concat(a, []int{1001}, b, []int{2})
	if !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v (BOS none, EOS appended)", ids, want)
	}
}

// TestStream: streaming every golden sequence id by id gives Decode's text, and no piece of it
// splits a character.
func TestStream(t *testing.T) {
	g := readGoldens(t)
	for _, tt := range []struct{ name, path string }{
		{"mistral", "testdata/mistral/tokenizer.model"},
		{"unigram", "testdata/unigram/spiece.model"},
		{"mistral-json", "testdata/mistral-json/tokenizer.json"},
		{"unigram-json", "testdata/unigram-json/tokenizer.json"},
		{"trained-unigram", "testdata/trained/unigram.model"},
		{"trained-bpe", "testdata/trained/bpe.model"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := loadTestFile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			s := tok.NewStream()
			for _, text := range g.Texts {
				ids, _ := tok.Encode(text, true)
				var b strings.Builder
				for _, id := range ids {
					piece := s.Next(id)
					if !utf8.ValidString(piece) || strings.Contains(piece, "\uFFFD") {
						t.Errorf("%q: Next(%d) = %q, a split character", text, id, piece)
					}
					b.WriteString(piece)
				}
				b.WriteString(s.Flush())
				if want := tok.Decode(ids, true); b.String() != want {
					t.Errorf("stream of %q = %q, Decode = %q", text, b.String(), want)
				}
			}
		})
	}
}

func TestStreamHoldsIncompleteBytes(t *testing.T) {
	tok, err := LoadSentencePiece("testdata/mistral/tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := tok.Encode("a 🤖", false) // the robot is four byte-fallback pieces
	if len(ids) < 5 {
		t.Fatalf("ids %v: want byte fallback", ids)
	}
	s := tok.NewStream()
	var got []string
	for _, id := range ids {
		got = append(got, s.Next(id))
	}
	want := []string{"a", " ", "", "", "", "🤖"} // "▁a", "▁", the robot's four bytes
	if !slices.Equal(got, want) {
		t.Errorf("pieces %q, want %q", got, want)
	}
	// A sequence cut inside a character: Flush writes U+FFFD, as Decode does.
	s.Next(ids[len(ids)-4])
	if got := s.Flush(); got != "\uFFFD" {
		t.Errorf("Flush of a lone lead byte = %q", got)
	}
}

func TestFiles(t *testing.T) {
	dir := mistralDir(t)
	writeFile(t, dir, "config.json", "{}")
	files, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files["tokenizer.model"] == nil || files["tokenizer_config.json"] == nil {
		t.Fatalf("files %v", slices.Collect(maps.Keys(files)))
	}
	// The files alone make the same tokenizer.
	copyDir := t.TempDir()
	for name, b := range files {
		writeFile(t, copyDir, name, string(b))
	}
	a, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load(copyDir)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := a.Encode("<s>Bonjour 🤖", true)
	y, _ := b.Encode("<s>Bonjour 🤖", true)
	if !slices.Equal(x, y) || a.ChatTemplate() != b.ChatTemplate() {
		t.Errorf("copied tokenizer differs: %v vs %v", x, y)
	}
	if _, err := Files(t.TempDir()); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("empty dir: %v", err)
	}
}

// Added tokens are matched leftmost first, the longest at one position, before the model sees
// the text; the spans between them are encoded as text.
func TestAddedTokens(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, "testdata/mistral/tokenizer.model", dir, "tokenizer.model")
	writeFile(t, dir, "tokenizer_config.json", `{"add_bos_token": false,
		"added_tokens_decoder": {"32000": {"content": "[INST]", "special": true}, "32001": {"content": "[INST][/INST]", "special": true},
		"32002": {"content": "<tool>", "special": false}}}`)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(s string) []int {
		ids, err := tok.Encode(s, false)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	tests := []struct {
		give string
		want []int
	}{
		{"[INST]", []int{32000}},
		{"[INST][/INST]", []int{32001}},
		{"a[INST]b", slices.Concat(enc("a"), []int{32000}, enc("b"))},
		{"<tool>[INST][INST][/INST]</s>", []int{32002, 32000, 32001, 2}},
		{"x <tool> y", slices.Concat(enc("x "), []int{32002}, enc(" y"))},
	}
	for _, tt := range tests {
		if got := enc(tt.give); !slices.Equal(got, tt.want) {
			t.Errorf("Encode(%q) = %v, want %v", tt.give, got, tt.want)
		}
	}
	// A non-special added token stays in the text; the span after an added token gets the dummy
	// prefix "▁" as HF's (legacy) Llama tokenizers give it.
	ids := enc("<tool>[INST]hi")
	if got := tok.Decode(ids, true); got != "<tool> hi" {
		t.Errorf("Decode skipping special = %q", got)
	}
	if tok.VocabSize() != 32003 || !tok.IsSpecial(32000) || tok.IsSpecial(32002) {
		t.Errorf("vocab %d, special 32000 %v, 32002 %v", tok.VocabSize(), tok.IsSpecial(32000), tok.IsSpecial(32002))
	}
}

// loadTestFile loads a tokenizer file of either format, by its extension.
func loadTestFile(path string) (*Tokenizer, error) {
	if strings.HasSuffix(path, ".json") {
		return LoadJSON(path)
	}
	return LoadSentencePiece(path)
}
