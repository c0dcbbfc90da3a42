package serve

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/pregate/pregate/model/tokenizer"
)

// mixtralTemplate is Mixtral-8x7B-Instruct-v0.1's chat template as it was released
// (model/chattemplate tests it and its successor against HF's renderings).
const mixtralTemplate = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"

// chatServer serves a one-layer synthetic Mixtral with Mistral's tokenizer and Mixtral's chat
// template.
func chatServer(t *testing.T) (*testServer, *tokenizer.Tokenizer) {
	t.Helper()
	return tokenizedServer(t, "chatty", map[string]string{"tokenizer.model": "mistral/tokenizer.model"}, map[string]any{
		"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false,
		"chat_template": mixtralTemplate}, 0)
}

func postTo(t *testing.T, url, path string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	out.ReadFrom(resp.Body) //nolint:errcheck // a short read fails the test's decoding
	return resp.StatusCode, out.Bytes()
}

// TestChat: messages go through the chat template and the tokenizer (BOS from the template, not
// added again), and the answer equals the completion of that prompt, in the chat shapes.
func TestChat(t *testing.T) {
	ts, tok := chatServer(t)
	messages := []map[string]any{
		{"role": "user", "content": "Hello"},
		{"role": "assistant", "content": "Hi there"},
		{"role": "user", "content": []map[string]any{{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}}},
	}
	const rendered = "<s>[INST] Hello [/INST]Hi there</s>[INST] How are you? [/INST]"
	prompt, err := tok.Encode(rendered, false)
	if err != nil || prompt[0] != tok.BOS() || slices.Contains(prompt[1:], tok.BOS()) {
		t.Fatalf("prompt %v, %v", prompt, err)
	}
	want := ts.complete(t, map[string]any{"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": true, "return_token_ids": true}).Choices[0]

	code, b := postTo(t, ts.url, "/v1/chat/completions", map[string]any{"model": "chatty", "messages": messages, "max_tokens": 6,
		"temperature": 0, "ignore_eos": true})
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	var c ChatCompletion
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Object != "chat.completion" || !strings.HasPrefix(c.ID, "chatcmpl-") || len(c.Choices) != 1 {
		t.Fatalf("response %s", b)
	}
	ch := c.Choices[0]
	if ch.Message == nil || ch.Message.Role != "assistant" || ch.Message.Content != want.Text || *ch.FinishReason != "length" ||
		c.Usage.PromptTokens != len(prompt) || c.Usage.CompletionTokens != 6 {
		t.Errorf("choice %+v (message %+v), usage %+v; want %q from a %d-token prompt", ch, ch.Message, c.Usage, want.Text, len(prompt))
	}
	if !bytes.Contains(b, []byte(`"logprobs":null`)) || bytes.Contains(b, []byte(`"delta"`)) {
		t.Errorf("response shape: %s", b)
	}

	// Logprobs: the completion's, in the chat shape.
	legacy := ts.complete(t, map[string]any{"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true, "logprobs": 2}).Choices[0].Logprobs
	code, b = postTo(t, ts.url, "/v1/chat/completions", map[string]any{"messages": messages, "max_tokens": 3, "temperature": 0,
		"ignore_eos": true, "logprobs": true, "top_logprobs": 2})
	var withLP ChatCompletion
	if err := json.Unmarshal(b, &withLP); err != nil || code != 200 || withLP.Choices[0].Logprobs == nil || len(withLP.Choices[0].Logprobs.Content) != 3 {
		t.Fatalf("chat logprobs: %d %s", code, b)
	}
	for i, e := range withLP.Choices[0].Logprobs.Content {
		if e.Token != legacy.Tokens[i] || e.Logprob != *legacy.TokenLogprobs[i] || string(bytesOf(e.Bytes)) != e.Token || len(e.TopLogprobs) != 2 ||
			e.TopLogprobs[0].Logprob < e.TopLogprobs[1].Logprob || legacy.TopLogprobs[i][e.TopLogprobs[0].Token] != e.TopLogprobs[0].Logprob {
			t.Errorf("token %d: %+v; completions say %q %v %v", i, e, legacy.Tokens[i], *legacy.TokenLogprobs[i], legacy.TopLogprobs[i])
		}
	}

	// Streamed logprobs: the same entries, a chunk's with its tokens.
	code, b = postTo(t, ts.url, "/v1/chat/completions", map[string]any{"messages": messages, "max_tokens": 3, "temperature": 0,
		"ignore_eos": true, "logprobs": true, "top_logprobs": 2, "stream": true})
	var streamedLP []ChatTokenLogprob
	for _, line := range strings.Split(string(b), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk ChatCompletion
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatal(err)
		}
		if lp := chunk.Choices[0].Logprobs; lp != nil {
			streamedLP = append(streamedLP, lp.Content...)
		}
	}
	if a, b := mustJSON(streamedLP), mustJSON(withLP.Choices[0].Logprobs.Content); code != 200 || a != b {
		t.Errorf("streamed chat logprobs %s, whole %s", a, b)
	}

	// Streamed: the role, then the content, then finish_reason, then the usage.
	code, b = postTo(t, ts.url, "/v1/chat/completions", map[string]any{"messages": messages, "max_tokens": 6, "temperature": 0,
		"ignore_eos": true, "stream": true, "stream_options": map[string]any{"include_usage": true}})
	if code != http.StatusOK {
		t.Fatalf("stream: status %d: %s", code, b)
	}
	var (
		text, role string
		finish     []string
		usage      *Usage
		done       bool
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for i := 0; sc.Scan(); {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk ChatCompletion
		if err := json.Unmarshal([]byte(data), &chunk); err != nil || chunk.Object != "chat.completion.chunk" || chunk.ID == "" {
			t.Fatalf("chunk %s: %v", data, err)
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
			continue
		}
		d := chunk.Choices[0].Delta
		if i == 0 && (d.Role != "assistant" || d.Content == nil || *d.Content != "") {
			t.Errorf("first chunk %s, want the role and empty content", data)
		}
		role += d.Role
		if d.Content != nil {
			text += *d.Content
		}
		if f := chunk.Choices[0].FinishReason; f != nil {
			finish = append(finish, *f)
		}
		i++
	}
	if role != "assistant" || text != want.Text || !slices.Equal(finish, []string{"length"}) || usage == nil ||
		usage.CompletionTokens != 6 || usage.PromptTokens != len(prompt) || !done {
		t.Errorf("streamed: role %q text %q finish %v usage %+v done %v; want %q", role, text, finish, usage, done, want.Text)
	}
}

func TestChatBadRequests(t *testing.T) {
	ts, _ := chatServer(t)
	plain := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), nil)
	user := []map[string]any{{"role": "user", "content": "Hi"}}
	tests := []struct {
		name   string
		url    string
		give   map[string]any
		status int
		param  string
		msg    string
	}{
		{"no tokenizer", plain.url, map[string]any{"messages": user}, 400, "messages", "tokenizer"},
		{"no messages", ts.url, map[string]any{"messages": []any{}}, 400, "messages", "messages is empty"},
		{"roles do not alternate", ts.url, map[string]any{"messages": []map[string]any{{"role": "user", "content": "a"}, {"role": "user", "content": "b"}}},
			400, "messages", "Conversation roles must alternate"},
		{"image part", ts.url, map[string]any{"messages": []map[string]any{{"role": "user", "content": []map[string]any{{"type": "image_url"}}}}},
			400, "messages", "only text"},
		{"unknown field", ts.url, map[string]any{"messages": user, "tools": []any{}}, 400, "tools", "unrecognized"},
		{"top_logprobs without logprobs", ts.url, map[string]any{"messages": user, "top_logprobs": 2}, 400, "top_logprobs", "needs logprobs"},
		{"top_logprobs over 20", ts.url, map[string]any{"messages": user, "logprobs": true, "top_logprobs": 21}, 400, "top_logprobs", "≤ 20"},
		{"echo", ts.url, map[string]any{"messages": user, "echo": true}, 400, "echo", "unrecognized"},
		{"n", ts.url, map[string]any{"messages": user, "n": 0}, 400, "n", "1 ≤ n ≤ 128"},
		{"other model", ts.url, map[string]any{"messages": user, "model": "gpt-4"}, 404, "", "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := postTo(t, tt.url, "/v1/chat/completions", tt.give)
			if code != tt.status {
				t.Fatalf("status %d, want %d: %s", code, tt.status, b)
			}
			checkError(t, b, "invalid_request_error", tt.param, tt.msg)
		})
	}
	// A stop string ends a chat answer too.
	code, b := postTo(t, ts.url, "/v1/chat/completions", map[string]any{"messages": user, "max_tokens": 4, "temperature": 0, "ignore_eos": true})
	var c ChatCompletion
	if code != 200 || json.Unmarshal(b, &c) != nil || len([]rune(c.Choices[0].Message.Content)) < 2 {
		t.Fatalf("status %d: %s", code, b)
	}
	full := c.Choices[0].Message.Content
	stop := string([]rune(full)[1:2])
	_, b = postTo(t, ts.url, "/v1/chat/completions", map[string]any{"messages": user, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "stop": stop})
	if err := json.Unmarshal(b, &c); err != nil || c.Choices[0].Message.Content != full[:strings.Index(full, stop)] || *c.Choices[0].FinishReason != "stop" {
		t.Errorf("stop %q in %q: %s", stop, full, b)
	}
}

func bytesOf(b []int) []byte {
	out := make([]byte, len(b))
	for i, v := range b {
		out[i] = byte(v)
	}
	return out
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
