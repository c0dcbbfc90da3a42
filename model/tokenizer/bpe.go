package tokenizer

import "container/heap"

// BPE, in the two flavours the served models use. SentencePiece's (tokenizer.model) merges the
// adjacent pair whose concatenation is the vocabulary piece of highest score; HuggingFace's
// (tokenizer.json) merges the pair of lowest rank in the merges list. Both break ties leftmost, so
// one merge loop serves both, parameterized by pairRank.

// symbol is one piece of a word being merged: a byte range of the word, linked to its neighbours.
type symbol struct {
	start, end int // byte range in the word
	id         int // vocabulary id, or -1 when the range is no piece (yet)
	prev, next int // neighbour indexes, -1 at the ends
	dead       bool
	frozen     bool // a user-defined piece: never merged
}

// pairRank says whether the symbols l and r may merge: with what priority (lower merges first)
// and into which id.
type pairRank func(word string, l, r *symbol) (rank float64, id int, ok bool)

// candidate is a possible merge of symbols[left] and its right neighbour.
type candidate struct {
	rank        float64
	left, right int
	size        int // the merged byte length, to notice a stale candidate
	id          int
}

type agenda []candidate

func (a agenda) Len() int { return len(a) }
func (a agenda) Less(i, j int) bool {
	if a[i].rank != a[j].rank {
		return a[i].rank < a[j].rank
	}
	return a[i].left < a[j].left
}
func (a agenda) Swap(i, j int) { a[i], a[j] = a[j], a[i] }
func (a *agenda) Push(x any)   { *a = append(*a, x.(candidate)) }
func (a *agenda) Pop() any {
	old := *a
	c := old[len(old)-1]
	*a = old[:len(old)-1]
	return c
}

// mergeBPE merges syms (already linked, in word order) until no pair may merge, and returns the
// live symbols in order.
func mergeBPE(word string, syms []symbol, rank pairRank) []symbol {
	a := &agenda{}
	push := func(l int) {
		if l < 0 || syms[l].next < 0 {
			return
		}
		r := syms[l].next
		if p, id, ok := rank(word, &syms[l], &syms[r]); ok {
			heap.Push(a, candidate{rank: p, left: l, right: r, size: syms[r].end - syms[l].start, id: id})
		}
	}
	for i := range syms {
		push(i)
	}
	for a.Len() > 0 {
		c := heap.Pop(a).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		if l.dead || r.dead || l.next != c.right || r.end-l.start != c.size {
			continue // a neighbour merged since this candidate was queued
		}
		l.end, l.id, l.next = r.end, c.id, r.next
		r.dead = true
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		push(l.prev)
		push(c.left)
	}
	out := syms[:0:0]
	for i := 0; i >= 0 && i < len(syms); i = syms[i].next {
		out = append(out, syms[i])
	}
	return out
}

// linkSymbols sets prev and next of consecutive symbols.
func linkSymbols(syms []symbol) []symbol {
	for i := range syms {
		syms[i].prev, syms[i].next = i-1, i+1
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	return syms
}
