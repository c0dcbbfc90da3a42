package tokenizer

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// spaceSymbol is SentencePiece's visible space, U+2581, which stands for ' ' inside pieces.
const spaceSymbol = "\u2581"

// charsmap is SentencePiece's precompiled normalization map (NormalizerSpec.precompiled_charsmap,
// and the "Precompiled" normalizer of tokenizer.json): a Darts-clone double-array trie from input
// byte strings to offsets into a blob of NUL-terminated replacements. The blob layout is a
// little-endian uint32 trie size in bytes, the trie's uint32 units, then the replacements.
type charsmap struct {
	units []uint32
	repl  []byte
}

// parseCharsmap checks the layout; an empty map is valid and normalizes nothing.
func parseCharsmap(b []byte) (*charsmap, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("precompiled charsmap: %d bytes, too short", len(b))
	}
	size := binary.LittleEndian.Uint32(b)
	if size%4 != 0 || uint64(size) > uint64(len(b)-4) || size == 0 {
		return nil, fmt.Errorf("precompiled charsmap: trie size %d in a %d-byte map", size, len(b))
	}
	cm := &charsmap{units: make([]uint32, size/4), repl: b[4+size:]}
	for i := range cm.units {
		cm.units[i] = binary.LittleEndian.Uint32(b[4+4*i:])
	}
	return cm, nil
}

// longest finds the longest key of the trie that prefixes s, returning its replacement and length
// (0 when no key matches). Out-of-range trie links (a corrupt map) end the search.
func (cm *charsmap) longest(s string) (string, int) {
	// Darts-clone unit layout: bit 8 has_leaf; label = unit & (1<<31 | 0xFF); value = unit & (1<<31 - 1);
	// offset = (unit >> 10) << ((unit & (1 << 9)) >> 6).
	offset := func(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }
	n := uint32(len(cm.units))
	id := offset(cm.units[0])
	bestLen, bestVal := 0, uint32(0)
	for i := 0; i < len(s); i++ {
		id ^= uint32(s[i])
		if id >= n {
			break
		}
		u := cm.units[id]
		if u&(1<<31|0xFF) != uint32(s[i]) {
			break
		}
		id ^= offset(u)
		if id >= n {
			break
		}
		if u>>8&1 == 1 {
			bestLen, bestVal = i+1, cm.units[id]&(1<<31-1)
		}
	}
	if bestLen == 0 || int(bestVal) >= len(cm.repl) {
		return "", 0
	}
	r := cm.repl[bestVal:]
	if end := indexByte(r, 0); end >= 0 {
		r = r[:end]
	}
	return string(r), bestLen
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// prefix normalizes the start of s: the replacement of the longest charsmap key, else the first
// character unchanged (U+FFFD for a byte that is not UTF-8), and how many bytes of s it consumed.
func (cm *charsmap) prefix(s string) (string, int) {
	if cm != nil {
		if r, n := cm.longest(s); n > 0 {
			return r, n
		}
	}
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n == 1 {
		return "\uFFFD", 1
	}
	return s[:n], n
}

// spNormalizer is SentencePiece's Normalizer::Normalize: charsmap replacement, the dummy-prefix
// space, runs of spaces collapsed and ends trimmed (remove_extra_whitespaces), and ' ' escaped to ▁.
type spNormalizer struct {
	cm                  *charsmap
	addDummyPrefix      bool
	removeExtraSpaces   bool
	escapeSpaces        bool
	userDefined         map[string]bool // pieces matched verbatim, never normalized
	maxUserDefinedBytes int
}

// matchUserDefined returns the length of the longest user-defined piece prefixing s, or 0.
func (n *spNormalizer) matchUserDefined(s string) int {
	for l := min(len(s), n.maxUserDefinedBytes); l > 0; l-- {
		if n.userDefined[s[:l]] {
			return l
		}
	}
	return 0
}

func (n *spNormalizer) prefix(s string) (string, int) {
	if l := n.matchUserDefined(s); l > 0 {
		return s[:l], l
	}
	return n.cm.prefix(s)
}

// normalize returns the text the model segments.
func (n *spNormalizer) normalize(s string) string {
	if n.removeExtraSpaces {
		for s != "" {
			p, l := n.prefix(s)
			if p != " " {
				break
			}
			s = s[l:]
		}
	}
	if s == "" {
		return ""
	}
	space := " "
	if n.escapeSpaces {
		space = spaceSymbol
	}
	var b strings.Builder
	b.Grow(len(s) + len(s)/2 + len(space))
	if n.addDummyPrefix {
		b.WriteString(space)
	}
	prevSpace := n.removeExtraSpaces
	for s != "" {
		p, l := n.prefix(s)
		s = s[l:]
		for prevSpace && strings.HasPrefix(p, " ") {
			p = p[1:]
		}
		if p != "" {
			if n.escapeSpaces {
				b.WriteString(strings.ReplaceAll(p, " ", spaceSymbol))
			} else {
				b.WriteString(p)
			}
			prevSpace = strings.HasSuffix(p, " ")
		}
		prevSpace = prevSpace && n.removeExtraSpaces
	}
	out := b.String()
	if n.removeExtraSpaces {
		for strings.HasSuffix(out, space) {
			out = out[:len(out)-len(space)]
		}
	}
	return out
}
