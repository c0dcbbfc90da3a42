package tokenizer

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// HF tokenizer.json support is written here rather than taken from github.com/sugarme/tokenizer:
// that library brings a training stack (progress bars, regexpset, gods, go-cache) for what is, for
// the served models, a few hundred lines: BPE with byte fallback (Mistral/Mixtral), Unigram (T5),
// and the handful of normalizers, pre-tokenizers and decoders their tokenizer.json files use. An
// unsupported component is an error naming it, never a silent difference.

// hfFile is the part of tokenizer.json that encoding and decoding use.
type hfFile struct {
	AddedTokens   []hfAddedToken  `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type hfAddedToken struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

// hfComponent is any normalizer, pre-tokenizer, decoder or post-processor: a type and its fields.
type hfComponent struct {
	Type string `json:"type"`

	Normalizers   []json.RawMessage `json:"normalizers"`          // Sequence (normalizer)
	PreTokenizers []json.RawMessage `json:"pretokenizers"`        // Sequence (pre-tokenizer)
	Decoders      []json.RawMessage `json:"decoders"`             // Sequence (decoder)
	Processors    []json.RawMessage `json:"processors"`           // Sequence (post-processor)
	Prepend       string            `json:"prepend"`              // Prepend
	Pattern       *hfPattern        `json:"pattern"`              // Replace
	Content       *string           `json:"content"`              // Replace, Strip (decoder)
	Charsmap      string            `json:"precompiled_charsmap"` // Precompiled
	Replacement   string            `json:"replacement"`          // Metaspace
	PrependScheme string            `json:"prepend_scheme"`       // Metaspace
	AddPrefix     *bool             `json:"add_prefix_space"`
	Split         *bool             `json:"split"`
	Start         int               `json:"start"` // Strip (decoder)
	Stop          int               `json:"stop"`
	StripLeft     bool              `json:"strip_left"` // Strip (normalizer)
	StripRight    bool              `json:"strip_right"`
	Single        []hfTemplatePart  `json:"single"` // TemplateProcessing
	SpecialTokens map[string]struct {
		IDs []int `json:"ids"`
	} `json:"special_tokens"`
}

type hfPattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type hfTemplatePart struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

// hfModel is the "model" object: BPE or Unigram.
type hfModel struct {
	Type         string          `json:"type"`
	Vocab        json.RawMessage `json:"vocab"`
	Merges       json.RawMessage `json:"merges"`
	UnkToken     *string         `json:"unk_token"`
	UnkID        *int            `json:"unk_id"`
	ByteFallback bool            `json:"byte_fallback"`
	FuseUnk      bool            `json:"fuse_unk"`
	IgnoreMerges bool            `json:"ignore_merges"`
	Prefix       *string         `json:"continuing_subword_prefix"`
	Suffix       *string         `json:"end_of_word_suffix"`
	Dropout      *float64        `json:"dropout"`
}

// newHFJSON builds a Tokenizer from the bytes of a tokenizer.json.
func newHFJSON(b []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("not tokenizer.json: %v", err)
	}
	t := &Tokenizer{bos: -1, eos: -1, unk: -1, pad: -1}
	seg := &hfSegmenter{}
	var err error
	if seg.model, err = t.parseHFModel(f.Model); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if seg.normalize, err = parseHFNormalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	if seg.pretokenize, err = parseHFPreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	dec, err := parseHFDecoder(f.Decoder)
	if err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	t.seg, t.dec = seg, dec
	for _, a := range f.AddedTokens {
		if err := t.addAdded(a.Content, a.ID, a.Special); err != nil {
			return nil, fmt.Errorf("added_tokens: %v", err)
		}
	}
	if err := t.parseHFPostProcessor(f.PostProcessor); err != nil {
		return nil, fmt.Errorf("post_processor: %w", err)
	}
	return t, nil
}

// parseHFModel fills the vocabulary and returns the model's word encoder.
func (t *Tokenizer) parseHFModel(raw json.RawMessage) (func(string) []int, error) {
	var m hfModel
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	if m.Type == "" { // files from before "type" was written: a vocab list is Unigram's
		m.Type = "BPE"
		if strings.HasPrefix(strings.TrimSpace(string(m.Vocab)), "[") {
			m.Type = "Unigram"
		}
	}
	switch m.Type {
	case "BPE":
		return t.parseHFBPE(&m)
	case "Unigram":
		return t.parseHFUnigram(&m)
	}
	return nil, unsupported("type %q (BPE and Unigram are supported)", m.Type)
}

// setVocab installs id → piece, and the byte pieces among them.
func (t *Tokenizer) setVocab(pieces []string) {
	t.vocab, t.ids = pieces, make(map[string]int, len(pieces))
	t.special, t.byteOf = make([]bool, len(pieces)), make([]int16, len(pieces))
	for id, p := range pieces {
		t.byteOf[id] = -1
		if v, ok := parseBytePiece(p); ok {
			t.byteOf[id] = int16(v)
		}
		if _, dup := t.ids[p]; !dup {
			t.ids[p] = id
		}
	}
}

func (t *Tokenizer) parseHFBPE(m *hfModel) (func(string) []int, error) {
	if m.Prefix != nil && *m.Prefix != "" || m.Suffix != nil && *m.Suffix != "" {
		return nil, unsupported("BPE with continuing_subword_prefix or end_of_word_suffix")
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, unsupported("BPE dropout %v", *m.Dropout)
	}
	var vocab map[string]int
	if err := json.Unmarshal(m.Vocab, &vocab); err != nil {
		return nil, fmt.Errorf("vocab: %v", err)
	}
	pieces := make([]string, len(vocab))
	seen := make([]bool, len(vocab))
	for p, id := range vocab {
		if id < 0 || id >= len(vocab) || seen[id] {
			return nil, fmt.Errorf("vocab: id %d of %q is out of range or repeated (ids must be 0..%d)", id, p, len(vocab)-1)
		}
		pieces[id], seen[id] = p, true
	}
	t.setVocab(pieces)
	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	bpe := &hfBPE{t: t, merges: make(map[[2]int]mergeRule, len(merges)), unk: -1,
		byteFallback: m.ByteFallback, fuseUnk: m.FuseUnk, ignoreMerges: m.IgnoreMerges}
	for rank, mg := range merges {
		l, lok := vocab[mg[0]]
		r, rok := vocab[mg[1]]
		n, nok := vocab[mg[0]+mg[1]]
		if !lok || !rok || !nok {
			return nil, fmt.Errorf("merge %d (%q %q) names a piece outside the vocabulary", rank, mg[0], mg[1])
		}
		if _, dup := bpe.merges[[2]int{l, r}]; !dup {
			bpe.merges[[2]int{l, r}] = mergeRule{rank: rank, id: n}
		}
	}
	if m.UnkToken != nil {
		id, ok := vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		bpe.unk, t.unk = id, id
	}
	if m.ByteFallback {
		for i := range bpe.byteID {
			id, ok := vocab[fmt.Sprintf("<0x%02X>", i)]
			if !ok {
				return nil, fmt.Errorf("byte_fallback without the piece <0x%02X>", i)
			}
			bpe.byteID[i] = id
		}
	}
	return bpe.encode, nil
}

// parseMerges reads merges as "a b" strings or as [a, b] pairs (both forms exist).
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([][2]string, len(strs))
		for i, s := range strs {
			l, r, ok := strings.Cut(s, " ")
			if !ok || strings.Contains(r, " ") {
				return nil, fmt.Errorf("merge %d is %q, not two pieces", i, s)
			}
			out[i] = [2]string{l, r}
		}
		return out, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("merges: %v", err)
	}
	return pairs, nil
}

type mergeRule struct{ rank, id int }

// hfBPE is HF's BPE model (tokenizers/src/models/bpe): a word's characters (each one not in the
// vocabulary becomes its UTF-8 bytes' <0xXX> pieces with byte_fallback, else the unknown piece),
// merged by lowest merge rank.
type hfBPE struct {
	t            *Tokenizer
	merges       map[[2]int]mergeRule
	unk          int
	byteID       [256]int
	byteFallback bool
	fuseUnk      bool
	ignoreMerges bool
}

func (b *hfBPE) encode(word string) []int {
	if b.ignoreMerges {
		if id, ok := b.t.ids[word]; ok && id < len(b.t.vocab) {
			return []int{id}
		}
	}
	syms := make([]symbol, 0, len(word))
	for i, r := range word {
		n := utf8.RuneLen(r)
		if id, ok := b.t.ids[word[i:i+n]]; ok {
			syms = append(syms, symbol{start: i, end: i + n, id: id})
			continue
		}
		if b.byteFallback {
			for j := i; j < i+n; j++ {
				syms = append(syms, symbol{start: j, end: j + 1, id: b.byteID[word[j]], frozen: true})
			}
			continue
		}
		if b.fuseUnk && len(syms) > 0 && syms[len(syms)-1].id == b.unk {
			syms[len(syms)-1].end = i + n
			continue
		}
		syms = append(syms, symbol{start: i, end: i + n, id: b.unk, frozen: true})
	}
	rank := func(_ string, l, r *symbol) (float64, int, bool) {
		if l.frozen || r.frozen {
			return 0, 0, false
		}
		m, ok := b.merges[[2]int{l.id, r.id}]
		return float64(m.rank), m.id, ok
	}
	merged := mergeBPE(word, linkSymbols(syms), rank)
	ids := make([]int, 0, len(merged))
	for _, s := range merged {
		if s.id >= 0 {
			ids = append(ids, s.id)
		}
	}
	return ids
}

func (t *Tokenizer) parseHFUnigram(m *hfModel) (func(string) []int, error) {
	var vocab []struct {
		Piece string
		Score float64
	}
	var raw [][2]json.RawMessage
	if err := json.Unmarshal(m.Vocab, &raw); err != nil {
		return nil, fmt.Errorf("vocab: %v", err)
	}
	for i, r := range raw {
		var v struct {
			Piece string
			Score float64
		}
		if json.Unmarshal(r[0], &v.Piece) != nil || json.Unmarshal(r[1], &v.Score) != nil {
			return nil, fmt.Errorf("vocab entry %d is not [piece, score]", i)
		}
		vocab = append(vocab, v)
	}
	if len(vocab) == 0 {
		return nil, fmt.Errorf("empty vocab")
	}
	pieces := make([]string, len(vocab))
	trie := newPieceTrie()
	minScore := math.Inf(1)
	for id, v := range vocab {
		pieces[id] = v.Piece
		trie.add(v.Piece, id)
		minScore = min(minScore, v.Score)
	}
	t.setVocab(pieces)
	if m.UnkID == nil || *m.UnkID < 0 || *m.UnkID >= len(vocab) {
		return nil, fmt.Errorf("unk_id missing or out of range")
	}
	t.unk = *m.UnkID
	lat := &unigramLattice{trie: trie, unkID: t.unk, unkScore: minScore - 10, fuseUnk: true, score64: true,
		score: func(id int) float64 { return vocab[id].Score }}
	var byteID [256]int
	if m.ByteFallback {
		for i := range byteID {
			id, ok := t.ids[fmt.Sprintf("<0x%02X>", i)]
			if !ok {
				return nil, fmt.Errorf("byte_fallback without the piece <0x%02X>", i)
			}
			byteID[i] = id
		}
	}
	return func(word string) []int {
		var ids []int
		for _, p := range lat.segment(word) {
			if p.id == t.unk && m.ByteFallback {
				for i := p.start; i < p.end; i++ {
					ids = append(ids, byteID[word[i]])
				}
				continue
			}
			ids = append(ids, p.id)
		}
		return ids
	}, nil
}

// hfSegmenter runs tokenizer.json's pipeline on a span without added tokens: normalizer,
// pre-tokenizer, then the model on each word.
type hfSegmenter struct {
	normalize   func(string) string
	pretokenize func(string) []string
	model       func(string) []int
}

func (s *hfSegmenter) encode(text string) []int {
	var ids []int
	for _, w := range s.pretokenize(s.normalize(text)) {
		if w != "" {
			ids = append(ids, s.model(w)...)
		}
	}
	return ids
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// parseHFNormalizer builds the normalizer: Sequence, Prepend, Replace, Precompiled, Strip,
// Lowercase.
func parseHFNormalizer(raw json.RawMessage) (func(string) string, error) {
	if isNull(raw) {
		return func(s string) string { return s }, nil
	}
	var c hfComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var steps []func(string) string
		for _, r := range c.Normalizers {
			n, err := parseHFNormalizer(r)
			if err != nil {
				return nil, err
			}
			steps = append(steps, n)
		}
		return func(s string) string {
			for _, n := range steps {
				s = n(s)
			}
			return s
		}, nil
	case "Prepend":
		p := c.Prepend
		return func(s string) string {
			if s == "" {
				return s
			}
			return p + s
		}, nil
	case "Replace":
		return parseReplace(&c)
	case "Precompiled":
		b, err := base64.StdEncoding.DecodeString(c.Charsmap)
		if err != nil {
			return nil, fmt.Errorf("precompiled_charsmap is not base64: %v", err)
		}
		cm, err := parseCharsmap(b)
		if err != nil {
			return nil, err
		}
		return func(s string) string {
			var out strings.Builder
			for s != "" {
				p, n := cm.prefix(s)
				out.WriteString(p)
				s = s[n:]
			}
			return out.String()
		}, nil
	case "Strip":
		left, right := c.StripLeft, c.StripRight
		return func(s string) string {
			if left {
				s = strings.TrimLeftFunc(s, unicode.IsSpace)
			}
			if right {
				s = strings.TrimRightFunc(s, unicode.IsSpace)
			}
			return s
		}, nil
	case "Lowercase":
		return strings.ToLower, nil
	}
	return nil, unsupported("type %q", c.Type)
}

// parseReplace reads a Replace normalizer or decoder: a literal or a regular expression.
func parseReplace(c *hfComponent) (func(string) string, error) {
	if c.Pattern == nil || c.Content == nil {
		return nil, fmt.Errorf("a Replace without pattern or content")
	}
	with := *c.Content
	switch {
	case c.Pattern.String != nil:
		from := *c.Pattern.String
		if from == "" {
			return nil, fmt.Errorf("a Replace of the empty string")
		}
		return func(s string) string { return strings.ReplaceAll(s, from, with) }, nil
	case c.Pattern.Regex != nil:
		re, err := regexp.Compile(*c.Pattern.Regex)
		if err != nil {
			return nil, fmt.Errorf("a Replace pattern: %v", err)
		}
		return func(s string) string { return re.ReplaceAllLiteralString(s, with) }, nil
	}
	return nil, fmt.Errorf("a Replace pattern is neither String nor Regex")
}

// parseHFPreTokenizer builds the pre-tokenizer: none, Sequence, Metaspace, WhitespaceSplit.
func parseHFPreTokenizer(raw json.RawMessage) (func(string) []string, error) {
	if isNull(raw) {
		return func(s string) []string { return []string{s} }, nil
	}
	var c hfComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		var steps []func(string) []string
		for _, r := range c.PreTokenizers {
			p, err := parseHFPreTokenizer(r)
			if err != nil {
				return nil, err
			}
			steps = append(steps, p)
		}
		return func(s string) []string {
			words := []string{s}
			for _, p := range steps {
				var next []string
				for _, w := range words {
					next = append(next, p(w)...)
				}
				words = next
			}
			return words
		}, nil
	case "WhitespaceSplit":
		return strings.Fields, nil
	case "Metaspace":
		m, err := newMetaspace(&c)
		if err != nil {
			return nil, err
		}
		return m.split, nil
	}
	return nil, unsupported("type %q", c.Type)
}

// metaspace is HF's Metaspace: spaces become the replacement (▁), one is prepended, and with split
// the text is cut before each replacement.
type metaspace struct {
	repl       string
	prepend    bool // "always" or "first" (each span the model sees starts a text here)
	splitWords bool
}

func newMetaspace(c *hfComponent) (*metaspace, error) {
	m := &metaspace{repl: c.Replacement, prepend: true, splitWords: c.Split == nil || *c.Split}
	if m.repl == "" {
		m.repl = spaceSymbol
	}
	switch c.PrependScheme {
	case "always", "first":
	case "never":
		m.prepend = false
	case "":
		m.prepend = c.AddPrefix == nil || *c.AddPrefix
	default:
		return nil, fmt.Errorf("unknown Metaspace prepend_scheme %q", c.PrependScheme)
	}
	return m, nil
}

func (m *metaspace) split(s string) []string {
	s = strings.ReplaceAll(s, " ", m.repl)
	if m.prepend && !strings.HasPrefix(s, m.repl) {
		s = m.repl + s
	}
	if !m.splitWords {
		return []string{s}
	}
	var words []string
	for s != "" {
		// Each replacement starts a word (HF's MergedWithNext).
		i := strings.Index(s[1:], m.repl)
		if i < 0 {
			words = append(words, s)
			break
		}
		words = append(words, s[:i+1])
		s = s[i+1:]
	}
	return words
}

// parseHFPostProcessor reads which special tokens Encode adds: TemplateProcessing's single
// template (tokens before $A are BOS, after it EOS), inside a Sequence or alone.
func (t *Tokenizer) parseHFPostProcessor(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c hfComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	switch c.Type {
	case "Sequence":
		for _, r := range c.Processors {
			if err := t.parseHFPostProcessor(r); err != nil {
				return err
			}
		}
	case "TemplateProcessing":
		seenA := false
		for _, p := range c.Single {
			switch {
			case p.Sequence != nil:
				seenA = true
			case p.SpecialToken != nil:
				st, ok := c.SpecialTokens[p.SpecialToken.ID]
				if !ok || len(st.IDs) != 1 || st.IDs[0] < 0 || st.IDs[0] >= len(t.vocab) {
					return fmt.Errorf("template token %q has no single id", p.SpecialToken.ID)
				}
				if seenA {
					t.eos, t.addEOS = st.IDs[0], true
				} else {
					t.bos, t.addBOS = st.IDs[0], true
				}
			}
		}
	}
	return nil // ByteLevel, RobertaProcessing, …: no BOS/EOS for a single sequence here
}
