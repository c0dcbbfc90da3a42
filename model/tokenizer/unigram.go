package tokenizer

import "unicode/utf8"

// unigramLattice is the Viterbi segmentation of SentencePiece's Unigram model (unigram_model.cc,
// EncodeOptimized): at each character boundary every vocabulary piece that starts there extends
// the best path ending at its end, the higher total score winning (the earlier-found on a tie); a
// character that no single-character piece covers becomes the unknown piece, scored unkScore.
type unigramLattice struct {
	trie     *pieceTrie
	score    func(id int) float64 // the score of piece id; ok=false pieces are not in trie
	unkID    int
	unkScore float64
	fuseUnk  bool // merge consecutive unknowns into one piece (SentencePiece and HF both do)
	score64  bool // keep path scores in float64 as HF does; SentencePiece keeps float32
}

// piece is one token of a segmentation: the byte range of the normalized text and its id.
type piece struct {
	start, end, id int
}

// segment returns the best segmentation of s.
func (u *unigramLattice) segment(s string) []piece {
	type node struct {
		score float64
		start int
		id    int
	}
	best := make([]node, len(s)+1)
	for i := range best {
		best[i].start = -1
	}
	for start := 0; start < len(s); {
		_, charLen := utf8.DecodeRuneInString(s[start:])
		here := best[start].score
		single := false
		u.trie.prefixes(s[start:], func(id, length int) {
			cand := u.score(id) + here
			t := &best[start+length]
			if t.start < 0 || cand > t.score {
				*t = node{score: u.round(cand), start: start, id: id}
			}
			if length == charLen {
				single = true
			}
		})
		if !single {
			cand := u.unkScore + here
			t := &best[start+charLen]
			if t.start < 0 || cand > t.score {
				*t = node{score: u.round(cand), start: start, id: u.unkID}
			}
		}
		start += charLen
	}
	var rev []piece
	for end := len(s); end > 0; end = best[end].start {
		n := best[end]
		if u.fuseUnk && n.id == u.unkID && len(rev) > 0 && rev[len(rev)-1].id == u.unkID {
			rev[len(rev)-1].start = n.start
			continue
		}
		rev = append(rev, piece{start: n.start, end: end, id: n.id})
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// round stores a path score as the reference does: SentencePiece in a float32, so that ties and
// rounding follow it exactly.
func (u *unigramLattice) round(x float64) float64 {
	if u.score64 {
		return x
	}
	return float64(float32(x))
}

// pieceTrie is a byte trie over vocabulary pieces, for enumerating the pieces that prefix a string.
type pieceTrie struct {
	nodes []trieNode
}

type trieNode struct {
	next map[byte]int32
	id   int32 // piece id ending here, or -1
}

func newPieceTrie() *pieceTrie {
	return &pieceTrie{nodes: []trieNode{{id: -1}}}
}

// add inserts piece with id; a later duplicate keeps the earlier id, as SentencePiece does.
func (t *pieceTrie) add(piece string, id int) {
	cur := int32(0)
	for i := 0; i < len(piece); i++ {
		n := &t.nodes[cur]
		nx, ok := n.next[piece[i]]
		if !ok {
			if n.next == nil {
				n.next = map[byte]int32{}
			}
			nx = int32(len(t.nodes))
			n.next[piece[i]] = nx
			t.nodes = append(t.nodes, trieNode{id: -1})
		}
		cur = nx
	}
	if t.nodes[cur].id < 0 {
		t.nodes[cur].id = int32(id)
	}
}

// prefixes calls fn for each piece that prefixes s, shortest first.
func (t *pieceTrie) prefixes(s string, fn func(id, length int)) {
	cur := int32(0)
	for i := 0; i < len(s); i++ {
		nx, ok := t.nodes[cur].next[s[i]]
		if !ok {
			return
		}
		cur = nx
		if id := t.nodes[cur].id; id >= 0 {
			fn(int(id), i+1)
		}
	}
}
