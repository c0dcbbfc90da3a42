package tokenizer

import (
	"math"
	"strings"
	"unicode/utf8"
)

// newSentencePiece builds a Tokenizer from a serialized ModelProto.
func newSentencePiece(b []byte) (*Tokenizer, error) {
	m, err := parseSPModel(b)
	if err != nil {
		return nil, err
	}
	cm, err := parseCharsmap(m.charsmap)
	if err != nil {
		return nil, err
	}
	n := len(m.pieces)
	t := &Tokenizer{
		vocab: m.pieces, ids: make(map[string]int, n), special: make([]bool, n), byteOf: make([]int16, n),
		bos: m.bosID, eos: m.eosID, unk: m.unkID, pad: m.padID,
		// HF's slow tokenizers: Llama/Mistral add BOS, T5 (no BOS) adds EOS; tokenizer_config.json may say otherwise.
		addBOS: m.bosID >= 0, addEOS: m.bosID < 0 && m.eosID >= 0,
	}
	sp := &spSegmenter{
		m: m, t: t,
		norm: &spNormalizer{cm: cm, addDummyPrefix: m.addDummyPrefix, removeExtraSpaces: m.removeExtraWhitespaces,
			escapeSpaces: m.escapeWhitespaces, userDefined: map[string]bool{}},
		pieceIDs: make(map[string]int, n),
	}
	// As unigram_model.cc initializes them: max_score_ starts at FLT_MIN (the smallest positive
	// normal float), so with the usual negative scores a user-defined piece scores about -0.1.
	minScore, maxScore := float32(math.MaxFloat32), float32(0x1p-126)
	for id, p := range m.pieces {
		t.byteOf[id] = -1
		if _, dup := t.ids[p]; !dup {
			t.ids[p] = id
		}
		switch m.types[id] {
		case pieceControl:
			t.special[id] = true
		case pieceByte:
			v, _ := parseBytePiece(p)
			t.byteOf[id] = int16(v)
		case pieceUserDefined:
			sp.norm.userDefined[p] = true
			sp.norm.maxUserDefinedBytes = max(sp.norm.maxUserDefinedBytes, len(p))
		case pieceNormal:
			minScore, maxScore = min(minScore, m.scores[id]), max(maxScore, m.scores[id])
		}
		switch m.types[id] {
		case pieceNormal, pieceUserDefined, pieceUnused:
			if _, dup := sp.pieceIDs[p]; !dup {
				sp.pieceIDs[p] = id
			}
		}
	}
	if m.modelType == modelUnigram {
		sp.lattice = newSPLattice(m, minScore, maxScore)
	}
	if m.byteFallback {
		for id, v := range t.byteOf {
			if v >= 0 {
				sp.byteID[v] = id
			}
		}
	}
	t.seg = sp
	t.dec = &spDecoder{m: m}
	// HF's tokenizers match the control and unknown pieces in text ("<s>" in a rendered chat
	// template is BOS); SentencePiece alone would split them into characters. The unknown piece
	// stays visible to Decode (" ⁇ "), as SentencePiece decodes it.
	for id, typ := range m.types {
		if typ == pieceControl || typ == pieceUnknown {
			if err := t.addAdded(m.pieces[id], id, typ == pieceControl); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// newSPLattice prepares Unigram segmentation: normal and user-defined pieces in the trie (unused
// ones are skipped), a user-defined piece scored so that it always wins (its byte length times the
// highest score, less 0.1, as EncodeOptimized does), unknowns scored 10 below the lowest normal
// piece (unigram_model.cc's kUnkPenalty).
func newSPLattice(m *spModel, minScore, maxScore float32) *unigramLattice {
	trie := newPieceTrie()
	for id, p := range m.pieces {
		if m.types[id] == pieceNormal || m.types[id] == pieceUserDefined {
			trie.add(p, id)
		}
	}
	return &unigramLattice{
		trie: trie, unkID: m.unkID, unkScore: float64(minScore) - 10, fuseUnk: true,
		score: func(id int) float64 {
			if m.types[id] == pieceUserDefined {
				return float64(float32(len(m.pieces[id]))*maxScore) - 0.1
			}
			return float64(m.scores[id])
		},
	}
}

// spSegmenter is SentencePiece's encoder: normalize, then BPE or Unigram, then byte fallback for
// pieces outside the vocabulary.
type spSegmenter struct {
	m        *spModel
	t        *Tokenizer
	norm     *spNormalizer
	pieceIDs map[string]int // normal, user-defined and unused pieces: what BPE may merge into
	lattice  *unigramLattice
	byteID   [256]int
}

func (s *spSegmenter) encode(text string) []int {
	norm := s.norm.normalize(text)
	if norm == "" {
		return nil
	}
	var pieces []piece
	if s.lattice != nil {
		pieces = s.lattice.segment(norm)
	} else {
		pieces = s.bpe(norm)
	}
	ids := make([]int, 0, len(pieces))
	for _, p := range pieces {
		if p.id == s.m.unkID && s.m.byteFallback {
			for i := p.start; i < p.end; i++ {
				ids = append(ids, s.byteID[norm[i]])
			}
			continue
		}
		ids = append(ids, p.id)
	}
	return ids
}

// bpe is bpe_model.cc's Encode: characters (user-defined pieces whole, never merged further) merged
// by highest piece score. A resulting symbol outside the vocabulary is the unknown piece.
func (s *spSegmenter) bpe(norm string) []piece {
	var syms []symbol
	for i := 0; i < len(norm); {
		sy := symbol{start: i, id: -1}
		l := s.norm.matchUserDefined(norm[i:])
		if l > 0 {
			sy.frozen = true
		} else {
			_, l = utf8.DecodeRuneInString(norm[i:])
		}
		sy.end = i + l
		syms = append(syms, sy)
		i += l
	}
	syms = linkSymbols(syms)
	rank := func(word string, l, r *symbol) (float64, int, bool) {
		if l.frozen || r.frozen {
			return 0, 0, false
		}
		id, ok := s.pieceIDs[word[l.start:r.end]]
		if !ok {
			return 0, 0, false
		}
		return -float64(s.m.scores[id]), id, true
	}
	merged := mergeBPE(norm, syms, rank)
	out := make([]piece, len(merged))
	for i, sy := range merged {
		id, ok := s.pieceIDs[norm[sy.start:sy.end]]
		if !ok || s.m.types[id] == pieceUnused {
			id = s.m.unkID // unused pieces are re-split by the reference; none of the served models has any
		}
		out[i] = piece{start: sy.start, end: sy.end, id: id}
	}
	return out
}

// spDecoder is SentencePieceProcessor::Decode: control pieces are invisible, the unknown piece is
// " ⁇ ", ▁ is a space, byte pieces are joined into characters (a byte that starts no valid one is
// U+FFFD), and the dummy-prefix space of the first piece is dropped.
type spDecoder struct {
	m *spModel
}

func (d *spDecoder) decode(t *Tokenizer, ids []int, atStart bool) string {
	var (
		b         strings.Builder
		bytes     []byte
		isBOSWS   = atStart
		bosWSSeen bool
	)
	flushBytes := func() {
		for len(bytes) > 0 {
			r, n := utf8.DecodeRune(bytes)
			if r == utf8.RuneError && n <= 1 {
				b.WriteString("\uFFFD")
				n = 1
			} else {
				b.Write(bytes[:n])
			}
			bytes = bytes[n:]
		}
	}
	for _, id := range ids {
		if v := t.byteOf[id]; v >= 0 {
			bytes = append(bytes, byte(v))
			continue
		}
		flushBytes()
		if bosWSSeen || b.Len() > 0 {
			isBOSWS = false
		}
		var s string
		s, bosWSSeen = d.piece(t, id, isBOSWS)
		b.WriteString(s)
	}
	flushBytes()
	return b.String()
}

// piece decodes one non-byte piece; the bool says it consumed the dummy-prefix space.
func (d *spDecoder) piece(t *Tokenizer, id int, isBOSWS bool) (string, bool) {
	if id < len(d.m.types) {
		switch d.m.types[id] {
		case pieceControl:
			return "", false
		case pieceUnknown:
			return d.m.unkSurface, false
		}
	}
	p := t.vocab[id]
	stripped := false
	if isBOSWS && (d.m.addDummyPrefix || d.m.removeExtraWhitespaces) {
		p, stripped = strings.CutPrefix(p, spaceSymbol)
		if d.m.removeExtraWhitespaces {
			stripped = false
		}
	}
	return strings.ReplaceAll(p, spaceSymbol, " "), stripped
}
