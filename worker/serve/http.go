package serve

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pregate/pregate/model/tokenizer"
)

// HTTP-only errors.
var (
	errModelNotFound = errors.New("serve: model not found")
	errTooLarge      = errors.New("serve: request body too large")
)

// statusClientClosed is what requests_total counts a request whose client went away under.
const statusClientClosed = 499

// errorKinds maps errors to HTTP statuses and OpenAI error types and codes, first match wins;
// anything else, such as an engine error that failed a Step, is a 500 server_error.
var errorKinds = []struct {
	err    error
	status int
	typ    string
	code   string
}{
	{ErrBadRequest, http.StatusBadRequest, "invalid_request_error", ""},
	{errModelNotFound, http.StatusNotFound, "invalid_request_error", "model_not_found"},
	{errTooLarge, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large"},
	{ErrOverloaded, http.StatusTooManyRequests, "rate_limit_error", "overloaded"},
	{ErrClosed, http.StatusServiceUnavailable, "server_error", "unavailable"},
	{context.Canceled, statusClientClosed, "invalid_request_error", "cancelled"},
	{context.DeadlineExceeded, http.StatusGatewayTimeout, "server_error", "timeout"},
}

// Error is the OpenAI error object: the body of every error response, {"error": Error}.
type Error struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// errorOf returns the HTTP status and the error object for err. A server error's own text names
// digests, stores and their addresses: clients get an id instead, and the log the whole error.
func (s *Server) errorOf(err error) (status int, e Error) {
	status, e = http.StatusInternalServerError, Error{Message: err.Error(), Type: "server_error"}
	defer func() {
		if status >= 500 && !errors.Is(err, ErrClosed) {
			id := rand.Text()[:16]
			s.log.Error("request failed", "error_id", id, "status", status, "err", err)
			e.Message = "the worker failed this request (error id " + id + "; its log has the details)"
		}
	}()
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			status, e.Type = k.status, k.typ
			if k.code != "" {
				e.Code = &k.code
			}
			break
		}
	}
	if re := (*requestError)(nil); errors.As(err, &re) {
		e.Message = re.msg
		if re.param != "" {
			e.Param = &re.param
		}
	}
	return status, e
}

// writeError answers err and returns the status written.
func (s *Server) writeError(w http.ResponseWriter, err error) int {
	status, e := s.errorOf(err)
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	if status != statusClientClosed {
		writeJSON(w, status, struct {
			Error Error `json:"error"`
		}{e})
	}
	return status
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client went away
}

// Handler serves the OpenAI-compatible API and the worker's probes:
//
//	POST /v1/completions   completions of token-id prompts (JSON, or server-sent events with stream)
//	GET  /v1/models        the model, as OpenAI lists models; GET /v1/models/{id} one
//	GET  /health           200 while the server is up (liveness)
//	GET  /ready            200 once Config.Ready returns nil, else 503 with its error (readiness)
//	GET  /metrics          the Prometheus registry
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", s.completions)
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, modelList{Object: "list", Data: []modelCard{s.card()}})
	})
	mux.HandleFunc("GET /v1/models/{id...}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != s.cfg.ModelName {
			s.writeError(w, fmt.Errorf("%w: the model `%s` does not exist", errModelNotFound, r.PathValue("id")))
			return
		}
		writeJSON(w, http.StatusOK, s.card())
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if s.isClosed() {
			http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n")) //nolint:errcheck // the client went away
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n")) //nolint:errcheck // the client went away
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) ready() error {
	if s.isClosed() {
		return ErrClosed
	}
	if s.cfg.Ready != nil {
		return s.cfg.Ready()
	}
	return nil
}

type modelList struct {
	Object string      `json:"object"`
	Data   []modelCard `json:"data"`
}

type modelCard struct {
	ID          string `json:"id"`
	Object      string `json:"object"`
	Created     int64  `json:"created"`
	OwnedBy     string `json:"owned_by"`
	MaxModelLen int    `json:"max_model_len,omitempty"`
}

func (s *Server) card() modelCard {
	return modelCard{ID: s.cfg.ModelName, Object: "model", Created: s.created, OwnedBy: "pregate", MaxModelLen: s.cfg.MaxModelLen}
}

// CompletionRequest is the body of POST /v1/completions: OpenAI's fields this server knows, and
// vLLM's ignore_eos and return_token_ids. Other fields are ignored, as OpenAI does.
type CompletionRequest struct {
	Model string `json:"model"`
	// Prompt is a list of token ids, or a list of such lists (one choice each); with a tokenizer
	// also a string, or a list of strings (encoded with the model's BOS/EOS as it adds them).
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`  // default 16
	Temperature   *float64        `json:"temperature"` // default 1; 0 is greedy
	TopP          *float64        `json:"top_p"`       // default 1
	Seed          *int64          `json:"seed"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	IgnoreEOS      bool `json:"ignore_eos"`
	ReturnTokenIDs bool `json:"return_token_ids"`

	// Not supported: accepted only at their defaults.
	N        *int            `json:"n"`
	BestOf   *int            `json:"best_of"`
	Logprobs *int            `json:"logprobs"`
	Echo     bool            `json:"echo"`
	Stop     json.RawMessage `json:"stop"`
}

// Completion is the response to a completion request, and each chunk of a streamed one.
type Completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"` // "text_completion"
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []Choice `json:"choices"`
	Usage   *Usage   `json:"usage,omitempty"`
}

// Choice is one prompt's completion (index: the prompt's position), or a streamed part of it.
type Choice struct {
	Index int    `json:"index"`
	Text  string `json:"text"` // the generated text (of this chunk, when streaming); "" without a tokenizer
	// Logprobs is always null.
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"` // "stop" | "length"; null until the last chunk
	// TokenIDs are the generated tokens (of this chunk, when streaming), with return_token_ids.
	TokenIDs []int `json:"token_ids,omitempty"`
	// PromptTokenIDs echo the prompt (in the first chunk, when streaming), with return_token_ids.
	PromptTokenIDs []int `json:"prompt_token_ids,omitempty"`
}

// Usage counts the tokens of a completion.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	code := s.complete(w, r)
	s.metrics.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// complete answers one completion request and returns its HTTP status.
func (s *Server) complete(w http.ResponseWriter, r *http.Request) int {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return s.writeError(w, err)
	}
	var req CompletionRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return s.writeError(w, jsonError(err))
	}
	reqs, err := s.parse(&req)
	if err != nil {
		return s.writeError(w, err)
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // a failed choice stops its siblings
	c, err := s.submit(ctx, reqs)
	if err != nil {
		return s.writeError(w, err)
	}
	defer s.withdraw(c)
	resp := &Completion{ID: "cmpl-" + rand.Text(), Object: "text_completion", Created: time.Now().Unix(), Model: s.cfg.ModelName}
	usage := &Usage{}
	for _, q := range reqs {
		usage.PromptTokens += len(q.Prompt)
	}
	if req.Stream {
		return s.stream(w, c, reqs, &req, resp, usage)
	}
	resp.Choices = make([]Choice, len(reqs))
	generated := make([][]int, len(reqs))
	for i := range resp.Choices {
		resp.Choices[i].Index = i
		if req.ReturnTokenIDs {
			resp.Choices[i].TokenIDs = []int{}
			resp.Choices[i].PromptTokenIDs = reqs[i].Prompt
		}
	}
	var evs []event
	for left := len(reqs); left > 0; {
		if evs, err = c.next(evs); err != nil {
			return s.writeError(w, err)
		}
		for _, ev := range evs {
			ch := &resp.Choices[ev.index]
			switch {
			case ev.err != nil:
				return s.writeError(w, ev.err)
			case ev.finish != "":
				ch.FinishReason = &ev.finish
				left--
			default:
				usage.CompletionTokens++
				generated[ev.index] = append(generated[ev.index], ev.token)
				if req.ReturnTokenIDs {
					ch.TokenIDs = append(ch.TokenIDs, ev.token)
				}
			}
		}
	}
	if tok := s.cfg.Tokenizer; tok != nil {
		for i := range resp.Choices {
			resp.Choices[i].Text = tok.Decode(generated[i], true)
		}
	}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	resp.Usage = usage
	writeJSON(w, http.StatusOK, resp)
	return http.StatusOK
}

// stream answers with server-sent events: a chunk per token, a chunk with each choice's
// finish_reason, the usage if asked for, then data: [DONE]. A failure sends an error event instead
// of the rest.
func (s *Server) stream(w http.ResponseWriter, c *call, reqs []Request, req *CompletionRequest, chunk *Completion, usage *Usage) int {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var buf bytes.Buffer
	send := func(v any) {
		buf.WriteString("data: ")
		b, _ := json.Marshal(v) // plain structs: cannot fail
		buf.Write(b)
		buf.WriteString("\n\n")
	}
	flush := func() error {
		_, err := w.Write(buf.Bytes())
		buf.Reset()
		if err == nil {
			err = rc.Flush()
		}
		return err
	}
	if err := flush(); err != nil { // the headers, at once
		return statusClientClosed
	}
	started := make([]bool, len(reqs))
	var texts []*tokenizer.Stream // one per choice: text out by whole characters
	if s.cfg.Tokenizer != nil {
		for range reqs {
			texts = append(texts, s.cfg.Tokenizer.NewStream())
		}
	}
	chunk.Choices = make([]Choice, 1)
	var (
		evs []event
		err error
	)
	for left := len(reqs); left > 0; {
		if evs, err = c.next(evs); err != nil {
			return statusClientClosed
		}
		for _, ev := range evs {
			ch := Choice{Index: ev.index}
			switch {
			case ev.err != nil:
				status, e := s.errorOf(ev.err)
				send(struct {
					Error Error `json:"error"`
				}{e})
				buf.WriteString("data: [DONE]\n\n")
				flush() //nolint:errcheck // ending anyway
				return status
			case ev.finish != "":
				ch.FinishReason = &ev.finish
				left--
				if texts != nil {
					ch.Text = texts[ev.index].Flush()
				}
			default:
				usage.CompletionTokens++
				if texts != nil {
					ch.Text = texts[ev.index].Next(ev.token)
				}
				if req.ReturnTokenIDs {
					ch.TokenIDs = []int{ev.token}
					if !started[ev.index] {
						ch.PromptTokenIDs = reqs[ev.index].Prompt
					}
				}
				started[ev.index] = true
			}
			chunk.Choices[0] = ch
			send(chunk)
		}
		if err := flush(); err != nil {
			return statusClientClosed
		}
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
		chunk.Choices, chunk.Usage = []Choice{}, usage
		send(chunk)
	}
	buf.WriteString("data: [DONE]\n\n")
	if err := flush(); err != nil {
		return statusClientClosed
	}
	return http.StatusOK
}

// readBody reads the request body, up to limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes, more than the limit of %d", errTooLarge, r.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return nil, fmt.Errorf("%w: more than the limit of %d bytes", errTooLarge, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("serve: reading the request: %w", err)
	}
	return body, nil
}

// jsonError turns a JSON decoding error into a bad request naming the field it can.
func jsonError(err error) error {
	if te := (*json.UnmarshalTypeError)(nil); errors.As(err, &te) && te.Field != "" {
		return badRequest(te.Field, "%s: expected %s, got a JSON %s", te.Field, te.Type, te.Value)
	}
	return badRequest("", "the request body is not valid JSON: %v", err)
}

// parse checks a completion request and turns it into one Request per prompt.
func (s *Server) parse(req *CompletionRequest) ([]Request, error) {
	if req.Model != "" && req.Model != s.cfg.ModelName {
		return nil, fmt.Errorf("%w: the model `%s` does not exist", errModelNotFound, req.Model)
	}
	switch {
	case req.N != nil && *req.N != 1:
		return nil, badRequest("n", "n = %d is not supported, only 1", *req.N)
	case req.BestOf != nil && *req.BestOf != 1:
		return nil, badRequest("best_of", "best_of = %d is not supported, only 1", *req.BestOf)
	case req.Logprobs != nil:
		return nil, badRequest("logprobs", "logprobs are not supported")
	case req.Echo:
		return nil, badRequest("echo", "echo is not supported")
	case !isEmptyJSON(req.Stop):
		return nil, badRequest("stop", "stop strings are not supported")
	}
	prompts, err := s.parsePrompt(req.Prompt)
	if err != nil {
		return nil, err
	}
	base := Request{MaxTokens: min(16, s.cfg.MaxTokens), Temperature: 1, TopP: 1, Seed: req.Seed, IgnoreEOS: req.IgnoreEOS}
	if req.MaxTokens != nil {
		base.MaxTokens = *req.MaxTokens
	}
	if req.Temperature != nil {
		base.Temperature = *req.Temperature
	}
	if req.TopP != nil {
		if *req.TopP <= 0 {
			return nil, badRequest("top_p", "top_p is %v, want 0 < top_p ≤ 1", *req.TopP)
		}
		base.TopP = *req.TopP
	}
	reqs := make([]Request, len(prompts))
	for i, p := range prompts {
		reqs[i] = base
		reqs[i].Prompt = p
	}
	return reqs, nil
}

// encodePrompts reads a text prompt (a string, or a list of strings) and encodes each with the
// tokenizer.
func (s *Server) encodePrompts(raw json.RawMessage) ([][]int, error) {
	if s.cfg.Tokenizer == nil {
		return nil, badRequest("prompt", "text prompts are not supported: the model has no tokenizer, so token ids are required")
	}
	var texts []string
	if raw[0] == '"' {
		texts = make([]string, 1)
		if json.Unmarshal(raw, &texts[0]) != nil {
			return nil, badRequest("prompt", "prompt is not a JSON string")
		}
	} else if json.Unmarshal(raw, &texts) != nil {
		return nil, badRequest("prompt", "prompt must be a string or a list of strings")
	}
	if len(texts) == 0 {
		return nil, badRequest("prompt", "prompt is empty")
	}
	prompts := make([][]int, len(texts))
	for i, text := range texts {
		ids, err := s.cfg.Tokenizer.Encode(text, true)
		if err != nil {
			return nil, badRequest("prompt", "prompt %d: %v", i, err)
		}
		if len(ids) == 0 {
			return nil, badRequest("prompt", "prompt %d is empty", i)
		}
		prompts[i] = ids
	}
	return prompts, nil
}

// isEmptyJSON reports an absent value, null, "" or [].
func isEmptyJSON(raw json.RawMessage) bool {
	switch string(bytes.Join(bytes.Fields(raw), nil)) {
	case "", "null", `""`, "[]":
		return true
	}
	return false
}

// parsePrompt reads a prompt: a list of token ids, or a list of non-empty such lists; with a
// tokenizer also a string or a list of strings, which it encodes.
func (s *Server) parsePrompt(raw json.RawMessage) ([][]int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, badRequest("prompt", "prompt is required")
	}
	const shape = "prompt must be a list of token ids or a list of token-id lists"
	if raw[0] == '"' || raw[0] == '[' && bytes.HasPrefix(bytes.TrimSpace(raw[1:]), []byte{'"'}) {
		return s.encodePrompts(raw)
	}
	var items []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return nil, badRequest("prompt", shape)
	}
	if len(items) == 0 {
		return nil, badRequest("prompt", "prompt is empty")
	}
	switch bytes.TrimSpace(items[0])[0] {
	case '[':
		prompts := make([][]int, len(items))
		for i, it := range items {
			if err := json.Unmarshal(it, &prompts[i]); err != nil || len(prompts[i]) == 0 {
				if err == nil {
					return nil, badRequest("prompt", "prompt %d is empty", i)
				}
				return nil, badRequest("prompt", shape)
			}
		}
		return prompts, nil
	}
	var ids []int
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, badRequest("prompt", shape)
	}
	return [][]int{ids}, nil
}
