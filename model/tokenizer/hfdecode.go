package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// hfDecoder is tokenizer.json's decoder: a chain of steps over the token strings, joined at the end
// (tokenizers/src/decoders).
type hfDecoder struct {
	steps []func(toks []string, atStart bool) []string
}

func (d *hfDecoder) decode(t *Tokenizer, ids []int, atStart bool) string {
	toks := make([]string, len(ids))
	for i, id := range ids {
		toks[i] = t.vocab[id]
	}
	for _, step := range d.steps {
		toks = step(toks, atStart)
	}
	return strings.Join(toks, "")
}

// parseHFDecoder builds the decoder: Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace.
// Without one, tokens are joined as they are.
func parseHFDecoder(raw json.RawMessage) (*hfDecoder, error) {
	d := &hfDecoder{}
	if isNull(raw) {
		return d, nil
	}
	return d, d.add(raw)
}

func (d *hfDecoder) add(raw json.RawMessage) error {
	var c hfComponent
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	switch c.Type {
	case "Sequence":
		for _, r := range c.Decoders {
			if err := d.add(r); err != nil {
				return err
			}
		}
	case "Replace":
		rep, err := parseReplace(&c)
		if err != nil {
			return err
		}
		d.steps = append(d.steps, func(toks []string, _ bool) []string {
			for i := range toks {
				toks[i] = rep(toks[i])
			}
			return toks
		})
	case "ByteFallback":
		d.steps = append(d.steps, func(toks []string, _ bool) []string { return byteFallback(toks) })
	case "Fuse":
		d.steps = append(d.steps, func(toks []string, _ bool) []string { return []string{strings.Join(toks, "")} })
	case "Strip":
		if c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return fmt.Errorf("a Strip content must be one character")
		}
		ch, start, stop := *c.Content, c.Start, c.Stop
		// Strip drops the prepended space: only where the sequence starts.
		d.steps = append(d.steps, func(toks []string, atStart bool) []string {
			for i, tok := range toks {
				for n := 0; n < start && atStart && strings.HasPrefix(tok, ch); n++ {
					tok = tok[len(ch):]
				}
				for n := 0; n < stop && strings.HasSuffix(tok, ch); n++ {
					tok = tok[:len(tok)-len(ch)]
				}
				toks[i] = tok
			}
			return toks
		})
	case "Metaspace":
		m, err := newMetaspace(&c)
		if err != nil {
			return err
		}
		d.steps = append(d.steps, func(toks []string, atStart bool) []string {
			for i := range toks {
				toks[i] = strings.ReplaceAll(toks[i], m.repl, " ")
				if i == 0 && atStart && m.prepend {
					toks[i] = strings.TrimPrefix(toks[i], " ")
				}
			}
			return toks
		})
	default:
		return unsupported("type %q", c.Type)
	}
	return nil
}

// byteFallback joins runs of <0xXX> tokens into their bytes: the text when they are valid UTF-8,
// else one U+FFFD per byte (HF's ByteFallback decoder).
func byteFallback(toks []string) []string {
	out := toks[:0:0]
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			out = append(out, strings.Repeat("\uFFFD", len(run)))
		}
		run = run[:0]
	}
	for _, tok := range toks {
		if v, ok := parseBytePiece(tok); ok {
			run = append(run, v)
			continue
		}
		flush()
		out = append(out, tok)
	}
	flush()
	return out
}
