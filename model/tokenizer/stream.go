package tokenizer

import "strings"

// Stream decodes a generated sequence one id at a time, as HF's incremental detokenization does
// (text-generation-inference, vLLM): it decodes a window of recent ids with and without the new
// one and emits the difference once it ends in complete UTF-8. Byte-fallback pieces of one
// character therefore come out together, and SentencePiece's "▁" rules apply as in a whole
// decode (the first piece's prepended space is dropped, a later "▁" is a space).
//
// A Stream is not safe for concurrent use; each sequence has its own.
type Stream struct {
	t            *Tokenizer
	skipSpecial  bool
	ids          []int
	prefix, read int // ids[prefix:read] was decoded and emitted; ids[read:] not yet emitted
}

// NewStream starts decoding a sequence; special tokens (BOS, EOS, …) are dropped.
func (t *Tokenizer) NewStream() *Stream {
	return &Stream{t: t, skipSpecial: true}
}

// Next adds id to the sequence and returns the text it completes: "" while a character is still
// incomplete (or the id is special), possibly the text of several ids at once.
func (s *Stream) Next(id int) string {
	s.ids = append(s.ids, id)
	return s.emit(false)
}

// Flush returns what Next held back at the end of a sequence (an incomplete character comes out
// as U+FFFD, as Decode writes it) and starts a new sequence.
func (s *Stream) Flush() string {
	out := s.emit(true)
	s.ids, s.prefix, s.read = s.ids[:0], 0, 0
	return out
}

func (s *Stream) emit(final bool) string {
	atStart := s.prefix == 0
	before := s.t.decode(s.ids[s.prefix:s.read], s.skipSpecial, atStart)
	after := s.t.decode(s.ids[s.prefix:], s.skipSpecial, atStart)
	if len(after) <= len(before) || !final && strings.HasSuffix(after, "\uFFFD") {
		return ""
	}
	// The window keeps the last emitted ids as context, so a piece's leading-space rule sees
	// what precedes it.
	s.prefix, s.read = s.read, len(s.ids)
	if !strings.HasPrefix(after, before) {
		return after // the new id changed earlier text; never expected with these decoders
	}
	return after[len(before):]
}
