package serve

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/pregate/pregate/model/tokenizer"
)

// MaxStops bounds the stop strings of a request, as OpenAI does.
const MaxStops = 4

// stopMatcher finds stop strings in a choice's text as it grows, across token boundaries. It holds
// back the longest tail that could still begin a stop string, so that no streamed chunk shows part
// of a stop string that matches later.
type stopMatcher struct {
	stops []string
	held  string
}

// push adds text and returns what may be sent now; stopped reports that a stop string matched:
// the text before it (the earliest match) is returned and the rest dropped.
func (m *stopMatcher) push(text string) (out string, stopped bool) {
	if len(m.stops) == 0 {
		return text, false
	}
	buf := m.held + text
	at := -1
	for _, s := range m.stops {
		if i := strings.Index(buf, s); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if at >= 0 {
		m.held = ""
		return buf[:at], true
	}
	// Whatever was sent before held cannot start a match: held is the longest tail that could.
	keep := 0
	for _, s := range m.stops {
		for k := min(len(s)-1, len(buf)); k > keep; k-- {
			if strings.HasSuffix(buf, s[:k]) {
				keep = k
				break
			}
		}
	}
	m.held = buf[len(buf)-keep:]
	return buf[:len(buf)-keep], false
}

// flush returns the held text: the choice ended without a match.
func (m *stopMatcher) flush() string {
	out := m.held
	m.held = ""
	return out
}

// Logprobs is OpenAI's legacy logprobs object of a completion choice: per token its text, its
// log-probability (null for the prompt's first token), the most likely tokens' at its position
// (with its own) and where its text starts in the choice's text, in characters.
type Logprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float32           `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// logprobEntry is one token's logprobs, as either API presents them.
type logprobEntry struct {
	id      int
	token   string   // its text alone (tokenText)
	logprob *float32 // nil for the prompt's first token
	top     []tokenLogprob
	offset  int // where its text starts in the choice's text, in characters
}

// legacyLogprobs presents entries in the completions API's shape: top_logprobs maps each of the
// most likely tokens, and the chosen one, to its logprob.
func (c *choiceState) legacyLogprobs(entries []logprobEntry) *Logprobs {
	l := &Logprobs{Tokens: []string{}, TokenLogprobs: []*float32{}, TopLogprobs: []map[string]float32{}, TextOffset: []int{}}
	for _, e := range entries {
		var top map[string]float32
		if e.logprob != nil {
			top = make(map[string]float32, len(e.top)+1)
			for _, t := range e.top {
				top[c.tokenText(t.id)] = t.logprob
			}
			top[e.token] = *e.logprob
		}
		l.Tokens = append(l.Tokens, e.token)
		l.TokenLogprobs = append(l.TokenLogprobs, e.logprob)
		l.TopLogprobs = append(l.TopLogprobs, top)
		l.TextOffset = append(l.TextOffset, e.offset)
	}
	return l
}

// choiceState turns one choice's events into what its client sees: text by whole characters,
// continuing the prompt's text (so a completion's leading space stays, as in vLLM), cut at a stop
// string or stop token; the prompt's text first with echo; logprobs in the legacy shape.
type choiceState struct {
	index   int
	prompt  []int
	tok     *tokenizer.Tokenizer // nil: the model has none; no text
	dec     *tokenizer.Stream
	stop    stopMatcher
	stopIDs []int
	withIDs bool // return_token_ids

	text        strings.Builder // the whole text, for a non-streamed answer
	unsent      strings.Builder // text not yet in a chunk
	offset      int             // characters decoded so far, the echoed prompt's included
	ids         []int           // generated tokens taken, up to the one that ended the choice
	idsSent     int
	logprobs    bool // asked for
	entries     []logprobEntry
	entriesSent int
	promptTexts []string // the text each prompt token completed, for its text_offset
	started     bool     // a chunk went out
	finish      string   // "" until the choice ended
}

func newChoiceState(index int, req Request, job *completionJob, tok *tokenizer.Tokenizer) *choiceState {
	c := &choiceState{index: index, prompt: req.Prompt, tok: tok, stop: stopMatcher{stops: job.stops},
		stopIDs: req.StopTokenIDs, withIDs: job.returnTokenIDs}
	c.logprobs = req.Logprobs
	if tok == nil {
		return c
	}
	// A decoder-only model's completion continues the prompt's text: decoding it after the
	// prompt keeps its leading space. An encoder-decoder model's output is a text of its own.
	c.dec = tok.NewStream()
	promptDec := c.dec
	if !job.continues {
		if !job.echo {
			return c
		}
		promptDec = tok.NewStream()
	}
	for _, id := range req.Prompt {
		piece := promptDec.Next(id)
		if job.echo {
			c.promptTexts = append(c.promptTexts, piece)
			c.emit(piece)
			c.offset += utf8.RuneCountInString(piece)
		}
	}
	if promptDec != c.dec {
		c.emit(promptDec.Flush())
	}
	return c
}

func (c *choiceState) emit(s string) {
	c.text.WriteString(s)
	c.unsent.WriteString(s)
}

// tokenText names a token in logprobs: its text alone, or "token_id:N" (vLLM's spelling) without a
// tokenizer.
func (c *choiceState) tokenText(id int) string {
	if c.tok == nil {
		return fmt.Sprintf("token_id:%d", id)
	}
	return c.tok.TokenText(id)
}

// promptLogprobs takes the echoed prompt's logprobs (of prompt[1:]; the first token has none).
func (c *choiceState) promptLogprobs(lps []positionLogprobs) {
	if !c.logprobs {
		return
	}
	offset := 0
	for i, id := range c.prompt {
		e := logprobEntry{id: id, token: c.tokenText(id), offset: offset}
		if i > 0 && i-1 < len(lps) {
			e.logprob, e.top = &lps[i-1].logprob, lps[i-1].top
		}
		c.entries = append(c.entries, e)
		if i < len(c.promptTexts) {
			offset += utf8.RuneCountInString(c.promptTexts[i])
		}
	}
}

// token takes a generated token and reports whether a stop string ended the choice with it. A
// stop token's text is left out, as vLLM does.
func (c *choiceState) token(id int, lp *positionLogprobs) (stopped bool) {
	c.ids = append(c.ids, id)
	var piece string
	if c.dec != nil && !slices.Contains(c.stopIDs, id) {
		piece = c.dec.Next(id)
	}
	if c.logprobs && lp != nil {
		c.entries = append(c.entries, logprobEntry{id: id, token: c.tokenText(id), logprob: &lp.logprob, top: lp.top, offset: c.offset})
	}
	c.offset += utf8.RuneCountInString(piece)
	out, stopped := c.stop.push(piece)
	c.emit(out)
	if stopped {
		c.finish = "stop"
	}
	return stopped
}

// end takes the sequence's end: what the decoder and the stop matcher held comes out.
func (c *choiceState) end(finish string) {
	c.finish = finish
	if c.dec != nil {
		out, stopped := c.stop.push(c.dec.Flush())
		c.emit(out)
		if stopped {
			c.finish = "stop"
			return
		}
	}
	c.emit(c.stop.flush())
}

// chunk returns what is new since the last chunk, as a streamed Choice, and the new logprob
// entries it presents.
func (c *choiceState) chunk() (Choice, []logprobEntry) {
	ch := Choice{Index: c.index, Text: c.unsent.String()}
	c.unsent.Reset()
	if c.withIDs {
		ch.TokenIDs = slices.Clone(c.ids[c.idsSent:])
		c.idsSent = len(c.ids)
		if !c.started && len(ch.TokenIDs) > 0 {
			ch.PromptTokenIDs = c.prompt
			c.started = true
		}
	}
	entries := c.entries[c.entriesSent:]
	c.entriesSent = len(c.entries)
	if len(entries) > 0 {
		ch.Logprobs = c.legacyLogprobs(entries)
	}
	if c.finish != "" {
		ch.FinishReason = &c.finish
	}
	return ch, entries
}

// whole returns the choice of a non-streamed answer.
func (c *choiceState) whole() Choice {
	ch := Choice{Index: c.index, Text: c.text.String(), FinishReason: &c.finish}
	if c.logprobs {
		ch.Logprobs = c.legacyLogprobs(c.entries)
	}
	if c.withIDs {
		ch.TokenIDs, ch.PromptTokenIDs = c.ids, c.prompt
	}
	return ch
}

// apply takes one event of the choice (not an error, not after the choice ended) and reports
// whether the choice ended with it.
func (c *choiceState) apply(cl *call, ev event) (ended bool) {
	switch {
	case ev.isPrompt:
		c.promptLogprobs(ev.prompt)
		return false
	case ev.finish != "":
		c.end(ev.finish)
		return true
	case c.token(ev.token, ev.lp):
		cl.stop(ev.index)
		return true
	}
	return false
}
