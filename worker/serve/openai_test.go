package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
	"github.com/pregate/pregate/model/tokenizer"
)

// textServer serves a one-layer synthetic Mixtral with a real tokenizer (sentencepiece's Unigram
// test model), so that prompts and completions are text.
func textServer(t *testing.T) (*testServer, *tokenizer.Tokenizer) {
	t.Helper()
	return tokenizedServer(t, "texty", map[string]string{"spiece.model": "unigram/spiece.model"}, nil, 1024)
}

// tokenizedServer serves a one-layer synthetic Mixtral with the tokenizer files named (file name →
// path under model/tokenizer/testdata), a tokenizer_config.json from config if not nil, and a
// vocabulary of vocab (0: the tokenizer's).
func tokenizedServer(t *testing.T, name string, files map[string]string, config map[string]any, vocab int) (*testServer, *tokenizer.Tokenizer) {
	t.Helper()
	tokDir := t.TempDir()
	for dst, src := range files {
		b, err := os.ReadFile(filepath.Join("..", "..", "model", "tokenizer", "testdata", src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tokDir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if config != nil {
		b, _ := json.Marshal(config)
		if err := os.WriteFile(filepath.Join(tokDir, "tokenizer_config.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if err := synth.Write(synth.Options{Arch: synth.ArchMixtral, Preset: "mixtral-tiny", Out: dir, Seed: 5, Layers: 1, Experts: 2,
		DModel: 32, DFF: 64, Heads: 4, Vocab: vocab, Tokenizer: tokDir}, nil); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return newTestServer(t, name, loadModel(t, dir), func(c *Config) { c.Tokenizer = tok }), tok
}

// streamBody posts a streaming request that must succeed and reads it whole.
func (ts *testServer) streamBody(t *testing.T, body map[string]any) streamed {
	t.Helper()
	body["stream"] = true
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: status %d: %s", resp.StatusCode, b)
	}
	st := readStream(t, bytes.NewReader(b))
	if !st.done || st.afterIt || len(st.errs) > 0 {
		t.Fatalf("stream: done %v, data after [DONE] %v, errors %v", st.done, st.afterIt, st.errs)
	}
	return st
}

func TestStopMatcher(t *testing.T) {
	tests := []struct {
		name  string
		stops []string
		give  []string // pushed in turn
		want  []string // what each push lets out
		stop  int      // the push that matches, -1 for none
		held  string   // flushed at the end, without a match
	}{
		{"none", nil, []string{"ab", "c"}, []string{"ab", "c"}, -1, ""},
		{"in one piece", []string{"b"}, []string{"abc"}, []string{"a"}, 0, ""},
		{"across pieces", []string{"xyz"}, []string{"ax", "y", "zq"}, []string{"a", "", ""}, 2, ""},
		{"false start released", []string{"xyz"}, []string{"ax", "yq"}, []string{"a", "xyq"}, -1, ""},
		{"held at the end", []string{"xyz"}, []string{"axy"}, []string{"a"}, -1, "xy"},
		{"earliest of several", []string{"cd", "b"}, []string{"abcd"}, []string{"a"}, 0, ""},
		{"longest possible start held", []string{"aab"}, []string{"xaa", "a", "b"}, []string{"x", "a", ""}, 2, ""},
		{"multibyte", []string{"日本"}, []string{"a日", "本b"}, []string{"a", ""}, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := stopMatcher{stops: tt.stops}
			stopped := -1
			for i, p := range tt.give {
				out, s := m.push(p)
				if out != tt.want[i] {
					t.Errorf("push %d (%q) let out %q, want %q", i, p, out, tt.want[i])
				}
				if s && stopped < 0 {
					stopped = i
				}
			}
			if stopped != tt.stop {
				t.Errorf("matched at push %d, want %d", stopped, tt.stop)
			}
			if got := m.flush(); stopped < 0 && got != tt.held {
				t.Errorf("flush %q, want %q", got, tt.held)
			}
		})
	}
}

// TestStopStrings: a stop string that spans token boundaries ends the choice before it (the
// text leaves it out, finish "stop"), whole and streamed, for each of n choices on its own.
func TestStopStrings(t *testing.T) {
	ts, tok := textServer(t)
	body := map[string]any{"prompt": "Hello world", "max_tokens": 12, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	full := ts.complete(t, body).Choices[0]
	if full.Text != " himselfclaim with sea momentlessif six da States things" {
		t.Fatalf("the synthetic model now says %q: update the test's expectations", full.Text)
	}
	prompt := full.PromptTokenIDs
	// A stop string from the middle of the 3rd token's text to the middle of the 4th's.
	upTo := func(k int) string { return continuation(tok, prompt, full.TokenIDs[:k]) }
	t2, t3, t4 := upTo(2), upTo(3), upTo(4)
	if len(t3)-len(t2) < 2 || len(t4)-len(t3) < 2 {
		t.Fatalf("tokens too short for the test: %q", full.Text)
	}
	stop := t4[len(t2)+1 : len(t3)+1]
	want := full.Text[:strings.Index(full.Text, stop)]
	if stop != "with " || want != " himselfclaim " {
		t.Fatalf("stop %q, want %q", stop, want)
	}

	body["stop"] = []string{"never there", stop}
	got := ts.complete(t, body)
	ch := got.Choices[0]
	if ch.Text != want || *ch.FinishReason != "stop" || !slices.Equal(ch.TokenIDs, full.TokenIDs[:4]) || got.Usage.CompletionTokens != 4 {
		t.Errorf("stopped: %q %q %v (usage %+v), want %q stop %v", ch.Text, *ch.FinishReason, ch.TokenIDs, got.Usage, want, full.TokenIDs[:4])
	}
	st := ts.streamBody(t, body)
	if st.texts[0] != want || st.finish[0] != "stop" || !slices.Equal(st.tokens[0], full.TokenIDs[:4]) {
		t.Errorf("streamed: %q %q %v, want %q stop", st.texts[0], st.finish[0], st.tokens[0], want)
	}

	// n = 2, sampled: each choice stops on its own text; a choice without the stop runs to length.
	body = map[string]any{"prompt": "Hello world", "max_tokens": 12, "temperature": 1, "seed": 3, "n": 2, "ignore_eos": true}
	free := ts.complete(t, body)
	body["stop"] = stop
	stopped := ts.complete(t, body)
	for i, ch := range stopped.Choices {
		text, found := free.Choices[i].Text, false
		if at := strings.Index(text, stop); at >= 0 {
			text, found = text[:at], true
		}
		if ch.Text != text || (*ch.FinishReason == "stop") != found {
			t.Errorf("choice %d: %q %s, want %q (stop found: %v)", i, ch.Text, *ch.FinishReason, text, found)
		}
	}
}

// TestStopTokenIDs: a stop token ends the choice like EOS, even with ignore_eos (switch-tiny
// generates 208 501 363 for this prompt).
func TestStopTokenIDs(t *testing.T) {
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), nil)
	prompt := []int{335, 150, 293, 221, 369, 468, 288, 197, 334, 123, 40, 241}
	for _, stream := range []bool{false, true} {
		body := map[string]any{"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "return_token_ids": true,
			"stop_token_ids": []int{7, 501}}
		var ids []int
		var finish string
		if stream {
			st := ts.streamBody(t, body)
			ids, finish = st.tokens[0], st.finish[0]
		} else {
			ch := ts.complete(t, body).Choices[0]
			ids, finish = ch.TokenIDs, *ch.FinishReason
		}
		if !slices.Equal(ids, []int{208, 501}) || finish != "stop" {
			t.Errorf("stream %v: %v %q, want [208 501] stop", stream, ids, finish)
		}
	}
}

// TestN: n choices per prompt, prompt-major; greedy ones are equal, seeded ones reproducible
// (choice j is seeded seed+j); usage counts each prompt once.
func TestN(t *testing.T) {
	name := "mixtral-tiny"
	prompts, want := goldenPrompts(t, fixtureDir(name))
	ts := newTestServer(t, name, loadModel(t, name), nil)
	c := ts.complete(t, map[string]any{"prompt": prompts, "n": 3, "max_tokens": 10, "temperature": 0, "return_token_ids": true})
	if len(c.Choices) != 6 {
		t.Fatalf("%d choices, want 6", len(c.Choices))
	}
	for i, ch := range c.Choices {
		if ch.Index != i || !slices.Equal(ch.TokenIDs, want[i/3]) || !slices.Equal(ch.PromptTokenIDs, prompts[i/3]) {
			t.Errorf("choice %d: index %d, %v, want prompt %d's %v", i, ch.Index, ch.TokenIDs, i/3, want[i/3])
		}
	}
	if u := c.Usage; u.PromptTokens != len(prompts[0])+len(prompts[1]) || u.CompletionTokens != 60 {
		t.Errorf("usage %+v", u)
	}

	sampled := func(seed int64, n int) []Choice {
		return ts.complete(t, map[string]any{"prompt": prompts[0], "n": n, "max_tokens": 8, "temperature": 1.2, "seed": seed,
			"ignore_eos": true, "return_token_ids": true}).Choices
	}
	two, seven, eight := sampled(7, 2), sampled(7, 1), sampled(8, 1)
	if !slices.Equal(two[0].TokenIDs, seven[0].TokenIDs) || !slices.Equal(two[1].TokenIDs, eight[0].TokenIDs) ||
		slices.Equal(two[0].TokenIDs, two[1].TokenIDs) {
		t.Errorf("n=2 seed 7: %v %v; seed 7: %v; seed 8: %v", two[0].TokenIDs, two[1].TokenIDs, seven[0].TokenIDs, eight[0].TokenIDs)
	}
	st := ts.streamBody(t, map[string]any{"prompt": prompts[0], "n": 2, "max_tokens": 8, "temperature": 1.2, "seed": 7,
		"ignore_eos": true, "return_token_ids": true})
	if !slices.Equal(st.tokens[0], two[0].TokenIDs) || !slices.Equal(st.tokens[1], two[1].TokenIDs) {
		t.Errorf("streamed n=2: %v", st.tokens)
	}
}

// TestPenalties: OpenAI's presence and frequency penalties on greedy decoding of fixed logits,
// which stay as they were (logprobs are of the model's distribution).
func TestPenalties(t *testing.T) {
	tests := []struct {
		name                string
		presence, frequency float64
		want                []int
	}{
		{"none", 0, 0, []int{1, 1, 1, 1, 1}},
		// token 1 at 1 − 0.6·count; token 2 at 0.5 − 0.6·count: 1, 2 (0.4 < 0.5), 1 (0.4 > −0.1), 0 (0 > −0.1 > −0.2), …
		{"frequency", 0, 0.6, []int{1, 2, 1, 0, 2}},
		{"presence", 0.6, 0, []int{1, 2, 1, 1, 1}},
		{"negative presence", -1, 0, []int{1, 1, 1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logits := []float32{0, 1, 0.5}
			s := newSampler(Request{PresencePenalty: tt.presence, FrequencyPenalty: tt.frequency})
			var sc scratch
			var got []int
			for range tt.want {
				got = append(got, s.next(logits, &sc))
			}
			if !slices.Equal(got, tt.want) || !slices.Equal(logits, []float32{0, 1, 0.5}) {
				t.Errorf("got %v (logits now %v), want %v", got, logits, tt.want)
			}
		})
	}
}

// TestPenaltiesOverHTTP: a strong frequency penalty keeps greedy decoding from repeating a token.
func TestPenaltiesOverHTTP(t *testing.T) {
	ts := newTestServer(t, "mixtral-tiny", loadModel(t, "mixtral-tiny"), nil)
	body := map[string]any{"prompt": []int{1, 95, 138}, "max_tokens": 40, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	plain := ts.complete(t, body).Choices[0].TokenIDs
	body["frequency_penalty"] = 2
	body["presence_penalty"] = 2
	ids := ts.complete(t, body).Choices[0].TokenIDs
	if slices.Equal(plain, ids) {
		t.Errorf("penalties changed nothing: %v", ids)
	}
	seen := map[int]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("token %d repeated under penalty 4 per use: %v", id, ids)
		}
		seen[id] = true
	}
}

// goldenLogits returns the mixtral-tiny fixture's logits of prompt row r, position i.
func goldenLogits(t *testing.T) func(r, i int) []float32 {
	t.Helper()
	g, err := model.OpenTensorFile(filepath.Join(fixtureDir("mixtral-tiny"), "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	logits, err := g.Float32("logits", 2, 10, 512)
	if err != nil {
		t.Fatal(err)
	}
	return func(r, i int) []float32 { return logits[(r*10+i)*512 : (r*10+i+1)*512] }
}

// refLogprob is log-softmax(logits)[id] in float64: −log Σ exp(x − x_id).
func refLogprob(logits []float32, id int) float64 {
	sum := 0.0
	for _, v := range logits {
		sum += math.Exp(float64(v) - float64(logits[id]))
	}
	return -math.Log(sum)
}

// TestLogprobs checks echo with logprobs against HF's logits of the mixtral-tiny prompts: the
// prompt's tokens (the first null), then the generated ones, in OpenAI's legacy shape, whole and
// streamed.
func TestLogprobs(t *testing.T) {
	name := "mixtral-tiny"
	prompts, want := goldenPrompts(t, fixtureDir(name))
	hf := goldenLogits(t)
	ts := newTestServer(t, name, loadModel(t, name), nil)
	body := map[string]any{"prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 3, "echo": true}
	c := ts.complete(t, body)
	for r, ch := range c.Choices {
		lp, p := ch.Logprobs, prompts[r]
		if lp == nil || len(lp.Tokens) != len(p)+1 || len(lp.TokenLogprobs) != len(p)+1 || len(lp.TopLogprobs) != len(p)+1 ||
			len(lp.TextOffset) != len(p)+1 {
			t.Fatalf("choice %d: logprobs %+v", r, lp)
		}
		if lp.TokenLogprobs[0] != nil || lp.TopLogprobs[0] != nil || lp.Tokens[0] != "token_id:1" {
			t.Errorf("choice %d: first prompt token %q %v %v, want token_id:1 and nulls", r, lp.Tokens[0], lp.TokenLogprobs[0], lp.TopLogprobs[0])
		}
		ids := append(slices.Clone(p), want[r][0])
		for i := 1; i < len(ids); i++ {
			ref := refLogprob(hf(r, i-1), ids[i])
			if got := lp.TokenLogprobs[i]; got == nil || math.Abs(float64(*got)-ref) > 1e-4 {
				t.Errorf("choice %d token %d (%d): logprob %v, HF's %v", r, i, ids[i], got, ref)
			}
			top := lp.TopLogprobs[i]
			if len(top) < 3 || len(top) > 4 || top[lp.Tokens[i]] != *lp.TokenLogprobs[i] {
				t.Errorf("choice %d token %d: top %v", r, i, top)
			}
			for tokName, v := range top {
				var id int
				if _, err := fmtSscanf(tokName, &id); err != nil || math.Abs(float64(v)-refLogprob(hf(r, i-1), id)) > 1e-4 {
					t.Errorf("choice %d token %d: top %s = %v", r, i, tokName, v)
				}
			}
		}
		// The generated token is greedy: the most likely of its position.
		last := len(p)
		for _, v := range lp.TopLogprobs[last] {
			if v > *lp.TokenLogprobs[last] {
				t.Errorf("choice %d: greedy token's logprob %v below %v", r, *lp.TokenLogprobs[last], v)
			}
		}
	}
	// Streamed: the same entries, in pieces.
	st := ts.streamLogprobs(t, body)
	for r, ch := range c.Choices {
		a, _ := json.Marshal(ch.Logprobs)
		b, _ := json.Marshal(st[r])
		if !bytes.Equal(a, b) {
			t.Errorf("choice %d streamed logprobs %s, whole %s", r, b, a)
		}
	}

	// Without echo: the generated tokens only; logprobs 0 names the chosen token alone.
	c = ts.complete(t, map[string]any{"prompt": prompts[0], "max_tokens": 3, "temperature": 0, "logprobs": 0})
	lp := c.Choices[0].Logprobs
	if len(lp.Tokens) != 3 || lp.Tokens[0] != "token_id:"+itoa(want[0][0]) || len(lp.TopLogprobs[0]) != 1 ||
		math.Abs(float64(*lp.TokenLogprobs[0])-refLogprob(hf(0, len(prompts[0])-1), want[0][0])) > 1e-4 {
		t.Errorf("logprobs 0 without echo: %+v", lp)
	}
	// An encoder-decoder model has no prompt logprobs.
	sw := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), nil)
	resp, b := post(t, context.Background(), sw.url, map[string]any{"prompt": []int{5, 6}, "logprobs": 1, "echo": true})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("switch echo+logprobs: %d %s", resp.StatusCode, b)
	}
	checkError(t, b, "invalid_request_error", "echo", "decoder-only")
}

// streamLogprobs streams body and joins each choice's logprobs.
func (ts *testServer) streamLogprobs(t *testing.T, body map[string]any) map[int]*Logprobs {
	t.Helper()
	body["stream"] = true
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	out := map[int]*Logprobs{}
	for _, line := range strings.Split(string(b), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c Completion
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatal(err)
		}
		for _, ch := range c.Choices {
			if ch.Logprobs == nil {
				continue
			}
			l := out[ch.Index]
			if l == nil {
				l = &Logprobs{}
				out[ch.Index] = l
			}
			l.Tokens = append(l.Tokens, ch.Logprobs.Tokens...)
			l.TokenLogprobs = append(l.TokenLogprobs, ch.Logprobs.TokenLogprobs...)
			l.TopLogprobs = append(l.TopLogprobs, ch.Logprobs.TopLogprobs...)
			l.TextOffset = append(l.TextOffset, ch.Logprobs.TextOffset...)
		}
	}
	return out
}

// TestEcho: echo puts the prompt's text first; with logprobs each token's text_offset points at
// its text.
func TestEcho(t *testing.T) {
	ts, tok := textServer(t)
	body := map[string]any{"prompt": "Hello world", "max_tokens": 5, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	plain := ts.complete(t, body).Choices[0]
	body["echo"] = true
	body["logprobs"] = 2
	ch := ts.complete(t, body).Choices[0]
	if want := tok.Decode(plain.PromptTokenIDs, true) + plain.Text; ch.Text != want {
		t.Errorf("echo: %q, want %q", ch.Text, want)
	}
	lp := ch.Logprobs
	ids := append(slices.Clone(plain.PromptTokenIDs), plain.TokenIDs...)
	if len(lp.Tokens) != len(ids) {
		t.Fatalf("%d logprobs for %d tokens", len(lp.Tokens), len(ids))
	}
	runes := []rune(ch.Text)
	for i, id := range ids {
		text := strings.TrimPrefix(tok.TokenText(id), " ")
		if lp.Tokens[i] != tok.TokenText(id) || i > 0 && lp.TextOffset[i] < lp.TextOffset[i-1] ||
			!tok.IsSpecial(id) && !strings.HasPrefix(strings.TrimPrefix(string(runes[lp.TextOffset[i]:]), " "), text) {
			t.Errorf("token %d (%q) at offset %d of %q", i, lp.Tokens[i], lp.TextOffset[i], ch.Text)
		}
	}
	st := ts.streamBody(t, body)
	if st.texts[0] != ch.Text {
		t.Errorf("streamed echo %q, want %q", st.texts[0], ch.Text)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// fmtSscanf reads "token_id:N".
func fmtSscanf(s string, id *int) (int, error) { return fmt.Sscanf(s, "token_id:%d", id) }

// TestChoiceText: a decoder-only model's completion continues the prompt's text; an
// encoder-decoder model's is a text of its own, after the echoed prompt's; a stop token's text is
// left out.
func TestChoiceText(t *testing.T) {
	tok, err := tokenizer.LoadSentencePiece(filepath.Join("..", "..", "model", "tokenizer", "testdata", "unigram", "spiece.model"))
	if err != nil {
		t.Fatal(err)
	}
	prompt, _ := tok.Encode("Hello", true)
	gen, _ := tok.Encode("world again", false)
	stopID := gen[len(gen)-1]
	tests := []struct {
		name            string
		continues, echo bool
		stopIDs         []int
		want            string
	}{
		{"continues", true, false, nil, strings.TrimPrefix(tok.Decode(append(slices.Clone(prompt), gen...), true), tok.Decode(prompt, true))},
		{"continues, echo", true, true, nil, tok.Decode(append(slices.Clone(prompt), gen...), true)},
		{"its own, echo", false, true, nil, tok.Decode(prompt, true) + tok.Decode(gen, true)},
		{"its own", false, false, nil, tok.Decode(gen, true)},
		{"stop token", false, false, []int{stopID}, tok.Decode(gen[:len(gen)-1], true)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChoiceState(0, Request{Prompt: prompt, StopTokenIDs: tt.stopIDs}, &completionJob{echo: tt.echo, continues: tt.continues}, tok)
			for _, id := range gen {
				c.token(id, nil)
			}
			c.end("length")
			if got := c.whole().Text; got != tt.want {
				t.Errorf("text %q, want %q", got, tt.want)
			}
		})
	}
}
