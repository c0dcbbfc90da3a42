package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// goldens is testdata/goldens.json, written by testdata/gen_goldens.py with the reference
// SentencePiece (Debian's python3-sentencepiece).
type goldens struct {
	Version string                  `json:"sentencepiece_version"`
	Texts   []string                `json:"texts"`
	Models  map[string][]goldenCase `json:"models"`
}

type goldenCase struct {
	IDs     []int  `json:"ids"`
	Decoded string `json:"decoded"`
}

func readGoldens(t *testing.T) goldens {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "goldens.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldens
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Texts) < 50 {
		t.Fatalf("goldens hold %d texts", len(g.Texts))
	}
	return g
}

// checkGoldens encodes every golden text with tok and compares ids and decode(encode(x)) exactly.
func checkGoldens(t *testing.T, tok *Tokenizer, cases []goldenCase, texts []string) {
	t.Helper()
	idsOK, decOK := 0, 0
	for i, text := range texts {
		want := cases[i]
		got, err := tok.Encode(text, false)
		if err != nil {
			t.Errorf("Encode(%q): %v", text, err)
			continue
		}
		if slices.Equal(got, want.IDs) || len(got) == 0 && len(want.IDs) == 0 {
			idsOK++
		} else {
			t.Errorf("Encode(%q)\n got %v\nwant %v", text, got, want.IDs)
		}
		if dec := tok.Decode(want.IDs, true); dec == want.Decoded {
			decOK++
		} else {
			t.Errorf("Decode(%v)\n got %q\nwant %q", want.IDs, dec, want.Decoded)
		}
	}
	t.Logf("%d texts: ids exact %d, decode exact %d", len(texts), idsOK, decOK)
}

func TestSentencePieceGoldens(t *testing.T) {
	g := readGoldens(t)
	for _, tt := range []struct{ name, path string }{
		{"mistral", "testdata/mistral/tokenizer.model"},
		{"unigram", "testdata/unigram/spiece.model"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := LoadSentencePiece(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			checkGoldens(t, tok, g.Models[tt.name], g.Texts)
		})
	}
}
