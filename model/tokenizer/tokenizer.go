package tokenizer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"
)

// ErrTokenizer is wrapped by every error this package returns about a tokenizer file: it names the
// file and what is wrong with it.
var ErrTokenizer = errors.New("tokenizer: invalid tokenizer file")

// ErrNoTokenizer: the directory has none of tokenizer.json, tokenizer.model, spiece.model.
var ErrNoTokenizer = errors.New("tokenizer: no tokenizer file")

// ErrUnsupported is wrapped, with ErrTokenizer, when a tokenizer file is well formed but uses a
// model, normalizer, pre-tokenizer or decoder this package does not implement (a caller may carry
// on without the tokenizer).
var ErrUnsupported = errors.New("tokenizer: unsupported")

// unsupported returns an error wrapping ErrUnsupported.
func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, args...)...)
}

// Tokenizer turns text into token ids and back. It is immutable after Load and safe for concurrent
// use; a Stream (NewStream) holds the state of one generated sequence.
type Tokenizer struct {
	vocab   []string // id → piece as the vocabulary spells it (▁ for space, <0x41> for a byte)
	ids     map[string]int
	special []bool  // control pieces and special added tokens: Decode(ids, true) drops them
	byteOf  []int16 // id → byte of a byte-fallback piece, or -1
	added   []addedToken

	bos, eos, unk, pad int // -1 when the tokenizer has none
	addBOS, addEOS     bool

	seg segmenter
	dec decoder

	chatTemplate string
	source       string // the file it was loaded from, for messages
}

// segmenter encodes one span of text that holds no added token.
type segmenter interface {
	encode(text string) []int
}

// decoder turns the pieces of ids (special ones already dropped) into text. atStart says the ids
// begin the sequence, where the space a normalizer prepended is dropped.
type decoder interface {
	decode(t *Tokenizer, ids []int, atStart bool) string
}

// addedToken is a token matched verbatim in the text before the model sees it (HF's added tokens:
// <s>, [INST], <extra_id_0>, …).
type addedToken struct {
	content string
	id      int
	special bool
}

// Load reads the tokenizer of a checkpoint directory: tokenizer.json when present (HF's fast
// tokenizer), else tokenizer.model or spiece.model (SentencePiece), with special tokens, added
// tokens and the chat template from tokenizer_config.json and special_tokens_map.json.
func Load(dir string) (*Tokenizer, error) {
	var (
		t   *Tokenizer
		err error
	)
	switch {
	case exists(filepath.Join(dir, "tokenizer.json")):
		t, err = LoadJSON(filepath.Join(dir, "tokenizer.json"))
	case exists(filepath.Join(dir, "tokenizer.model")):
		t, err = LoadSentencePiece(filepath.Join(dir, "tokenizer.model"))
	case exists(filepath.Join(dir, "spiece.model")):
		t, err = LoadSentencePiece(filepath.Join(dir, "spiece.model"))
	default:
		return nil, fmt.Errorf("%w in %s (want tokenizer.json, tokenizer.model or spiece.model)", ErrNoTokenizer, dir)
	}
	if err != nil {
		return nil, err
	}
	if err := t.applyConfig(dir); err != nil {
		return nil, err
	}
	return t, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// LoadSentencePiece reads a SentencePiece model file alone (no tokenizer_config.json).
func LoadSentencePiece(path string) (*Tokenizer, error) { return loadFile(path, newSentencePiece) }

// LoadJSON reads an HF tokenizer.json alone (no tokenizer_config.json).
func LoadJSON(path string) (*Tokenizer, error) { return loadFile(path, newHFJSON) }

// loadFile reads path and builds a Tokenizer from its bytes; a build error names the file.
func loadFile(path string, build func([]byte) (*Tokenizer, error)) (*Tokenizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := build(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTokenizer, path, err)
	}
	t.source = path
	return t, nil
}

// Source is the tokenizer file it was loaded from (tokenizer.json, tokenizer.model, spiece.model).
func (t *Tokenizer) Source() string { return t.source }

// VocabSize is the number of ids, added tokens included.
func (t *Tokenizer) VocabSize() int { return len(t.vocab) }

// BOS, EOS, UNK and Pad return the special ids, -1 where the tokenizer has none.
func (t *Tokenizer) BOS() int { return t.bos }

// EOS is the end-of-sequence id, -1 if none.
func (t *Tokenizer) EOS() int { return t.eos }

// UNK is the unknown-piece id, -1 if none.
func (t *Tokenizer) UNK() int { return t.unk }

// Pad is the padding id, -1 if none.
func (t *Tokenizer) Pad() int { return t.pad }

// ChatTemplate is tokenizer_config.json's chat_template (a Jinja template), "" if none.
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }

// Piece returns the vocabulary spelling of id, "" when out of range.
func (t *Tokenizer) Piece(id int) string {
	if id < 0 || id >= len(t.vocab) {
		return ""
	}
	return t.vocab[id]
}

// ID returns the id of a piece or added token.
func (t *Tokenizer) ID(piece string) (int, bool) {
	id, ok := t.ids[piece]
	return id, ok
}

// IsSpecial reports whether id is a control or special token (BOS, EOS, pad, <extra_id_N>, …).
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.special) && t.special[id]
}

// Encode returns the ids of text. Added tokens written in the text (such as "[INST]") become their
// ids; the rest goes through the normalizer and the model. With addSpecial, BOS and EOS are added
// as the tokenizer's configuration says (Mistral: BOS; T5: EOS).
func (t *Tokenizer) Encode(text string, addSpecial bool) ([]int, error) {
	if !utf8.ValidString(text) {
		return nil, fmt.Errorf("tokenizer: encode: text is not valid UTF-8")
	}
	var ids []int
	if addSpecial && t.addBOS && t.bos >= 0 {
		ids = append(ids, t.bos)
	}
	for text != "" {
		at, tok := t.nextAdded(text)
		if at > 0 {
			ids = append(ids, t.seg.encode(text[:at])...)
		}
		if tok == nil {
			break
		}
		ids = append(ids, tok.id)
		text = text[at+len(tok.content):]
	}
	if addSpecial && t.addEOS && t.eos >= 0 {
		ids = append(ids, t.eos)
	}
	return ids, nil
}

// nextAdded finds the leftmost added token in text (the longest at that position), returning its
// offset, or len(text) and nil.
func (t *Tokenizer) nextAdded(text string) (int, *addedToken) {
	best, bestAt := -1, len(text)
	for i := range t.added {
		at := strings.Index(text[:min(len(text), bestAt+len(t.added[i].content))], t.added[i].content)
		if at < 0 || at > bestAt {
			continue
		}
		if at < bestAt || best < 0 || len(t.added[i].content) > len(t.added[best].content) {
			best, bestAt = i, at
		}
	}
	if best < 0 {
		return len(text), nil
	}
	return bestAt, &t.added[best]
}

// Decode returns the text of ids. With skipSpecial, special tokens are dropped (as HF's
// skip_special_tokens); otherwise they appear as their content, "<s>", as HF's tokenizers write
// them. Ids out of range are dropped.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	return t.decode(ids, skipSpecial, true)
}

// TokenText returns the text of id alone, as it reads in the middle of a sequence (SentencePiece's
// leading "▁" is a space; a special token is its content; a lone byte piece is U+FFFD): how
// logprobs name tokens.
func (t *Tokenizer) TokenText(id int) string {
	return t.decode([]int{id}, false, false)
}

// decode is Decode of ids that start the sequence (atStart) or continue it.
func (t *Tokenizer) decode(ids []int, skipSpecial, atStart bool) string {
	var b strings.Builder
	run := make([]int, 0, len(ids))
	flush := func() {
		if len(run) > 0 {
			b.WriteString(t.dec.decode(t, run, atStart && b.Len() == 0))
			run = run[:0]
		}
	}
	for _, id := range ids {
		switch {
		case id < 0 || id >= len(t.vocab):
		case t.special[id] && skipSpecial:
		case t.special[id]:
			flush()
			b.WriteString(t.vocab[id])
		default:
			run = append(run, id)
		}
	}
	flush()
	return b.String()
}

// addAdded registers an added token: it gets an id (its own, or the next free one) and is matched
// in text by Encode.
func (t *Tokenizer) addAdded(content string, id int, special bool) error {
	if content == "" {
		return fmt.Errorf("added token %d has no content", id)
	}
	if have, ok := t.ids[content]; ok && (id < 0 || id == have) {
		id = have
	}
	if id < 0 {
		id = len(t.vocab)
	}
	if id > len(t.vocab)+1<<20 {
		return fmt.Errorf("added token %q has id %d, far past the vocabulary (%d)", content, id, len(t.vocab))
	}
	for id >= len(t.vocab) {
		t.vocab = append(t.vocab, "")
		t.special = append(t.special, false)
		t.byteOf = append(t.byteOf, -1)
	}
	if t.vocab[id] != "" && t.vocab[id] != content {
		return fmt.Errorf("added token %q has id %d, which is %q", content, id, t.vocab[id])
	}
	t.vocab[id] = content
	t.ids[content] = id
	t.special[id] = t.special[id] || special
	for i := range t.added {
		if t.added[i].content == content {
			t.added[i].special = t.added[i].special || special
			return nil
		}
	}
	t.added = append(t.added, addedToken{content: content, id: id, special: special})
	sort.SliceStable(t.added, func(i, j int) bool { return len(t.added[i].content) > len(t.added[j].content) })
	return nil
}
