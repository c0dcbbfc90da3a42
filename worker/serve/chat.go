package serve

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pregate/pregate/model/chattemplate"
	"github.com/pregate/pregate/model/tokenizer"
)

// ChatRequest is the body of POST /v1/chat/completions: the messages are rendered with the
// model's chat template (tokenizer_config.json's chat_template) into one prompt, encoded without
// adding BOS (the template writes it, as HF's apply_chat_template does). A field it does not know
// is a 400 naming it.
type ChatRequest struct {
	Params
	Messages []ChatMessage `json:"messages"`
	// MaxCompletionTokens is OpenAI's newer name for max_tokens (it wins when both are set).
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	// AddGenerationPrompt (vLLM; default true) asks the template to open the assistant's turn.
	AddGenerationPrompt *bool `json:"add_generation_prompt"`
	// Logprobs asks for each token's logprob and, with TopLogprobs (≤ 20), the most likely
	// tokens' (OpenAI's chat shape: choices[].logprobs.content).
	Logprobs    bool `json:"logprobs"`
	TopLogprobs *int `json:"top_logprobs"`
}

// ChatMessage is one message: its content a string, or a list of text parts.
type ChatMessage struct {
	Role    string      `json:"role"`
	Content chatContent `json:"content"`
	Name    string      `json:"name,omitempty"`
}

// chatContent is a message's text: a string, null, or OpenAI's list of {"type": "text", "text"}
// parts (joined); other parts (images, audio) are a 400 (a requestError passes through the
// decoder as it is).
type chatContent string

func (c *chatContent) UnmarshalJSON(b []byte) error {
	var s *string
	if json.Unmarshal(b, &s) == nil {
		if s != nil {
			*c = chatContent(*s)
		}
		return nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return badRequest("messages", "a message's content must be a string or a list of text parts")
	}
	var text strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return badRequest("messages", "a content part of type %q is not supported, only text", p.Type)
		}
		text.WriteString(p.Text)
	}
	*c = chatContent(text.String())
	return nil
}

// ChatCompletion is the response to a chat request.
type ChatCompletion struct {
	responseHead
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage,omitempty"`
}

// ChatChoice is one answer: Message in a response, Delta in a streamed chunk.
type ChatChoice struct {
	Index        int              `json:"index"`
	Message      *ChatResponseMsg `json:"message,omitempty"`
	Delta        *ChatDelta       `json:"delta,omitempty"`
	Logprobs     *ChatLogprobs    `json:"logprobs"` // null unless asked for
	FinishReason *string          `json:"finish_reason"`
}

// ChatLogprobs are a chat answer's logprobs (of a chunk's tokens, when streaming).
type ChatLogprobs struct {
	Content []ChatTokenLogprob `json:"content"`
}

// ChatTokenLogprob is one token's: its text, logprob and UTF-8 bytes, and the most likely tokens'.
type ChatTokenLogprob struct {
	Token       string           `json:"token"`
	Logprob     float32          `json:"logprob"`
	Bytes       []int            `json:"bytes"`
	TopLogprobs []ChatTopLogprob `json:"top_logprobs"`
}

// ChatTopLogprob is one of the most likely tokens at a position.
type ChatTopLogprob struct {
	Token   string  `json:"token"`
	Logprob float32 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// utf8Bytes is OpenAI's bytes field: the token text's UTF-8 bytes as numbers.
func utf8Bytes(s string) []int {
	out := make([]int, len(s))
	for i := range len(s) {
		out[i] = int(s[i])
	}
	return out
}

// chatLogprobs presents entries in the chat API's shape.
func (c *choiceState) chatLogprobs(entries []logprobEntry) *ChatLogprobs {
	l := &ChatLogprobs{Content: make([]ChatTokenLogprob, 0, len(entries))}
	for _, e := range entries {
		if e.logprob == nil {
			continue // a prompt's first token: chat has no prompt logprobs
		}
		t := ChatTokenLogprob{Token: e.token, Logprob: *e.logprob, Bytes: utf8Bytes(e.token), TopLogprobs: make([]ChatTopLogprob, len(e.top))}
		for i, top := range e.top {
			text := c.tokenText(top.id)
			t.TopLogprobs[i] = ChatTopLogprob{Token: text, Logprob: top.logprob, Bytes: utf8Bytes(text)}
		}
		l.Content = append(l.Content, t)
	}
	return l
}

// ChatResponseMsg is the assistant's message.
type ChatResponseMsg struct {
	Role    string `json:"role"` // "assistant"
	Content string `json:"content"`
}

// ChatDelta is what a streamed chunk adds to the message: the role first, then content.
type ChatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// chat answers one chat request and returns its HTTP status.
func (s *Server) chat(w http.ResponseWriter, r *http.Request) int {
	var req ChatRequest
	if err := s.readRequest(w, r, &req); err != nil {
		return s.writeError(w, err)
	}
	job, err := s.parseChat(&req)
	if err != nil {
		return s.writeError(w, err)
	}
	head := responseHead{ID: "chatcmpl-" + rand.Text(), Object: "chat.completion", Created: time.Now().Unix(), Model: s.cfg.ModelName}
	return s.serveJob(w, r, job, &chatPresenter{head: head})
}

// parseChat checks a chat request, renders its messages and turns it into one Request per choice.
func (s *Server) parseChat(req *ChatRequest) (*completionJob, error) {
	if err := s.checkModel(req.Model); err != nil {
		return nil, err
	}
	prompt, err := s.renderChat(req)
	if err != nil {
		return nil, err
	}
	if req.MaxCompletionTokens != nil {
		req.MaxTokens = req.MaxCompletionTokens
	}
	// Without max_tokens a chat answer may take what the context leaves, as in OpenAI's API; a
	// server that does not know the context (MaxModelLen 0) gives 16, as completions do.
	base := Request{MaxTokens: min(16, s.cfg.MaxTokens), Logprobs: req.Logprobs}
	if req.TopLogprobs != nil {
		switch k := *req.TopLogprobs; {
		case !req.Logprobs:
			return nil, badRequest("top_logprobs", "top_logprobs needs logprobs: true")
		case k < 0 || k > MaxTopLogprobs:
			return nil, badRequest("top_logprobs", "top_logprobs is %d, want 0 ≤ top_logprobs ≤ %d", k, MaxTopLogprobs)
		default:
			base.TopLogprobs = k
		}
	}
	if s.cfg.MaxModelLen > 0 {
		base.MaxTokens = max(1, min(s.cfg.MaxTokens, s.cfg.MaxModelLen-len(prompt)))
	}
	return s.newJob(&req.Params, [][]int{prompt}, base)
}

// renderChat renders the messages with the model's chat template and encodes the text.
func (s *Server) renderChat(req *ChatRequest) ([]int, error) {
	tok := s.cfg.Tokenizer
	switch {
	case tok == nil:
		return nil, badRequest("messages", "chat needs the model's tokenizer, which it does not have; use /v1/completions with token ids")
	case s.chatTemplate == nil:
		return nil, badRequest("messages", "the model has no usable chat template: %v", s.chatTemplateErr)
	case len(req.Messages) == 0:
		return nil, badRequest("messages", "messages is empty")
	}
	msgs := make([]chattemplate.Message, len(req.Messages))
	for i, m := range req.Messages {
		msgs[i] = chattemplate.Message{Role: m.Role, Content: string(m.Content)}
	}
	text, err := s.chatTemplate.Render(msgs, req.AddGenerationPrompt == nil || *req.AddGenerationPrompt)
	if err != nil {
		return nil, badRequest("messages", "%v", err)
	}
	ids, err := tok.Encode(text, false)
	if err != nil {
		return nil, badRequest("messages", "%v", err)
	}
	if len(ids) == 0 {
		return nil, badRequest("messages", "the chat template rendered nothing")
	}
	return ids, nil
}

// parseChatTemplate parses the tokenizer's chat template, if it has one; nil and why not
// otherwise (chat requests then get 400 with the reason).
func parseChatTemplate(tok *tokenizer.Tokenizer) (*chattemplate.Template, error) {
	if tok == nil {
		return nil, errors.New("no tokenizer")
	}
	if tok.ChatTemplate() == "" {
		return nil, errors.New("its tokenizer_config.json has no chat_template")
	}
	return chattemplate.Parse(tok.ChatTemplate(), chattemplate.Tokens{
		BOS: tok.Piece(tok.BOS()), EOS: tok.Piece(tok.EOS()), UNK: tok.Piece(tok.UNK()), Pad: tok.Piece(tok.Pad()),
	})
}

// chatPresenter answers /v1/chat/completions: a message per choice, or chunks of deltas (the
// role first, then content, then an empty delta with finish_reason).
type chatPresenter struct{ head responseHead }

func (p *chatPresenter) whole(choices []*choiceState, u *Usage) any {
	out := make([]ChatChoice, len(choices))
	for i, c := range choices {
		w := c.whole()
		out[i] = ChatChoice{Index: i, Message: &ChatResponseMsg{Role: "assistant", Content: w.Text}, FinishReason: w.FinishReason}
		if c.logprobs {
			out[i].Logprobs = c.chatLogprobs(c.entries)
		}
	}
	return &ChatCompletion{responseHead: p.head, Choices: out, Usage: u}
}

func (p *chatPresenter) chunkOf(choices []ChatChoice, u *Usage) *ChatCompletion {
	head := p.head
	head.Object = "chat.completion.chunk"
	return &ChatCompletion{responseHead: head, Choices: choices, Usage: u}
}

func (p *chatPresenter) start(c *choiceState) any {
	empty := ""
	return p.chunkOf([]ChatChoice{{Index: c.index, Delta: &ChatDelta{Role: "assistant", Content: &empty}}}, nil)
}

func (p *chatPresenter) chunk(c *choiceState) any {
	ch, entries := c.chunk()
	out := ChatChoice{Index: c.index, Delta: &ChatDelta{}, FinishReason: ch.FinishReason}
	if ch.Text != "" || ch.FinishReason == nil {
		out.Delta.Content = &ch.Text
	}
	if len(entries) > 0 {
		out.Logprobs = c.chatLogprobs(entries)
	}
	return p.chunkOf([]ChatChoice{out}, nil)
}

func (p *chatPresenter) usage(u *Usage) any { return p.chunkOf([]ChatChoice{}, u) }
