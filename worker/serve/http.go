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
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
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
// vLLM's ignore_eos, stop_token_ids and return_token_ids. A field it does not know is a 400 naming
// it, as OpenAI answers.
type CompletionRequest struct {
	Model string `json:"model"`
	// Prompt is a list of token ids, or a list of such lists (n choices each); with a tokenizer
	// also a string, or a list of strings (encoded with the model's BOS/EOS as it adds them).
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`  // default 16
	Temperature   *float64        `json:"temperature"` // default 1; 0 is greedy
	TopP          *float64        `json:"top_p"`       // default 1
	Seed          *int64          `json:"seed"`        // choice j of a prompt is seeded Seed+j
	Stream        bool            `json:"stream"`
	StreamOptions *StreamOptions  `json:"stream_options"`
	IgnoreEOS     bool            `json:"ignore_eos"`
	// N is the choices per prompt (default 1): prompt i's are choices i·N … i·N+N−1.
	N *int `json:"n"`
	// Stop is a string or up to 4 (MaxStops), matched on the text (a tokenizer is needed): the
	// choice ends before the first match, which its text leaves out (finish_reason "stop").
	Stop         json.RawMessage `json:"stop"`
	StopTokenIDs []int           `json:"stop_token_ids"`
	// Logprobs asks for the legacy logprobs object with this many most likely tokens (≤ 20).
	Logprobs *int `json:"logprobs"`
	// Echo puts the prompt's text before the completion's (and, with logprobs, its tokens' logprobs).
	Echo             bool     `json:"echo"`
	PresencePenalty  *float64 `json:"presence_penalty"`  // in [-2, 2]; default 0
	FrequencyPenalty *float64 `json:"frequency_penalty"` // in [-2, 2]; default 0
	ReturnTokenIDs   bool     `json:"return_token_ids"`
	User             string   `json:"user"` // an end-user id for the client's own records; ignored

	// BestOf is accepted only when it changes nothing (1, or equal to n).
	BestOf *int `json:"best_of"`
}

// StreamOptions are OpenAI's stream_options.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
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

// Choice is one completion (index: prompt i's choice j is i·n+j), or a streamed part of it.
type Choice struct {
	Index int    `json:"index"`
	Text  string `json:"text"` // the generated text (of this chunk, when streaming); "" without a tokenizer
	// Logprobs is null unless the request asked for logprobs.
	Logprobs     *Logprobs `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"` // "stop" | "length"; null until the last chunk
	// TokenIDs are the generated tokens (of this chunk, when streaming), with return_token_ids.
	TokenIDs []int `json:"token_ids,omitempty"`
	// PromptTokenIDs echo the prompt (in the first chunk, when streaming), with return_token_ids.
	PromptTokenIDs []int `json:"prompt_token_ids,omitempty"`
}

// Usage counts the tokens of a completion: each prompt once, whatever n.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// completionJob is a checked completion request: one engine Request per choice, and how to
// present them.
type completionJob struct {
	reqs           []Request
	promptTokens   int // each prompt once
	echo           bool
	stops          []string
	stream         bool
	includeUsage   bool
	returnTokenIDs bool
	continues      bool // the completion continues the prompt's text (a decoder-only model)
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	code := s.complete(w, r)
	s.metrics.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// complete answers one completion request and returns its HTTP status.
func (s *Server) complete(w http.ResponseWriter, r *http.Request) int {
	var req CompletionRequest
	if err := s.readRequest(w, r, &req); err != nil {
		return s.writeError(w, err)
	}
	job, err := s.parse(&req)
	if err != nil {
		return s.writeError(w, err)
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // a failed choice stops its siblings
	c, err := s.submit(ctx, job.reqs)
	if err != nil {
		return s.writeError(w, err)
	}
	defer s.withdraw(c)
	choices := make([]*choiceState, len(job.reqs))
	for i, q := range job.reqs {
		choices[i] = newChoiceState(i, q, job, s.cfg.Tokenizer)
	}
	resp := &Completion{ID: "cmpl-" + rand.Text(), Object: "text_completion", Created: time.Now().Unix(), Model: s.cfg.ModelName}
	if job.stream {
		return s.stream(w, c, choices, job, resp)
	}
	var evs []event
	for left := len(choices); left > 0; {
		if evs, err = c.next(evs); err != nil {
			return s.writeError(w, err)
		}
		for _, ev := range evs {
			ch := choices[ev.index]
			switch {
			case ch.finish != "": // the scheduler's last events after a stop string
			case ev.err != nil:
				return s.writeError(w, ev.err)
			case ch.apply(c, ev):
				left--
			}
		}
	}
	resp.Choices = make([]Choice, len(choices))
	for i, ch := range choices {
		resp.Choices[i] = ch.whole()
	}
	resp.Usage = usageOf(job, choices)
	writeJSON(w, http.StatusOK, resp)
	return http.StatusOK
}

// usageOf counts a finished job's tokens.
func usageOf(job *completionJob, choices []*choiceState) *Usage {
	u := &Usage{PromptTokens: job.promptTokens}
	for _, c := range choices {
		u.CompletionTokens += len(c.ids)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// stream answers with server-sent events: a chunk per event of a choice (a token, the prompt's
// logprobs, its end with finish_reason), the usage if asked for, then data: [DONE]. A failure
// sends an error event instead of the rest.
func (s *Server) stream(w http.ResponseWriter, c *call, choices []*choiceState, job *completionJob, chunk *Completion) int {
	sse, err := startSSE(w)
	if err != nil {
		return statusClientClosed
	}
	chunk.Choices = make([]Choice, 1)
	var evs []event
	for left := len(choices); left > 0; {
		if evs, err = c.next(evs); err != nil {
			return statusClientClosed
		}
		for _, ev := range evs {
			ch := choices[ev.index]
			if ch.finish != "" {
				continue // the scheduler's last events after a stop string
			}
			if ev.err != nil {
				return s.streamError(sse, ev.err)
			}
			if ch.apply(c, ev) {
				left--
			}
			chunk.Choices[0] = ch.chunk()
			sse.send(chunk)
		}
		if err := sse.flush(); err != nil {
			return statusClientClosed
		}
	}
	if job.includeUsage {
		chunk.Choices, chunk.Usage = []Choice{}, usageOf(job, choices)
		sse.send(chunk)
	}
	return sse.done()
}

// sseWriter writes server-sent events, buffered until flush.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

// startSSE sends the headers of an event stream at once.
func startSSE(w http.ResponseWriter) (*sseWriter, error) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sse := &sseWriter{w: w, rc: http.NewResponseController(w)}
	return sse, sse.flush()
}

func (e *sseWriter) send(v any) {
	e.buf.WriteString("data: ")
	b, _ := json.Marshal(v) // plain structs: cannot fail
	e.buf.Write(b)
	e.buf.WriteString("\n\n")
}

func (e *sseWriter) flush() error {
	_, err := e.w.Write(e.buf.Bytes())
	e.buf.Reset()
	if err == nil {
		err = e.rc.Flush()
	}
	return err
}

// done ends the stream with data: [DONE] and returns the status to count.
func (e *sseWriter) done() int {
	e.buf.WriteString("data: [DONE]\n\n")
	if err := e.flush(); err != nil {
		return statusClientClosed
	}
	return http.StatusOK
}

// streamError ends a stream with an error event, then [DONE], and returns the error's status.
func (s *Server) streamError(sse *sseWriter, err error) int {
	status, e := s.errorOf(err)
	sse.send(struct {
		Error Error `json:"error"`
	}{e})
	sse.done()
	return status
}

// readRequest reads a JSON body into v. A field v does not have is a 400 naming it.
func (s *Server) readRequest(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("", "the request body is not valid JSON: data after the object")
	}
	return nil
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
	// encoding/json has no type for this one; its text is `json: unknown field "name"`.
	if quoted, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if field, err := strconv.Unquote(quoted); err == nil {
			return badRequest(field, "unrecognized request argument supplied: %s", field)
		}
	}
	return badRequest("", "the request body is not valid JSON: %v", err)
}

// maxN bounds n, as OpenAI does.
const maxN = 128

// parse checks a completion request and turns it into one Request per choice.
func (s *Server) parse(req *CompletionRequest) (*completionJob, error) {
	if req.Model != "" && req.Model != s.cfg.ModelName {
		return nil, fmt.Errorf("%w: the model `%s` does not exist", errModelNotFound, req.Model)
	}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	switch {
	case n < 1 || n > maxN:
		return nil, badRequest("n", "n is %d, want 1 ≤ n ≤ %d", n, maxN)
	case req.BestOf != nil && *req.BestOf != 1 && *req.BestOf != n:
		return nil, badRequest("best_of", "best_of = %d is not supported, only 1 or n", *req.BestOf)
	case req.Logprobs != nil && (*req.Logprobs < 0 || *req.Logprobs > MaxTopLogprobs):
		return nil, badRequest("logprobs", "logprobs is %d, want 0 ≤ logprobs ≤ %d", *req.Logprobs, MaxTopLogprobs)
	}
	stops, err := s.parseStop(req.Stop)
	if err != nil {
		return nil, err
	}
	prompts, err := s.parsePrompt(req.Prompt)
	if err != nil {
		return nil, err
	}
	base := Request{MaxTokens: min(16, s.cfg.MaxTokens), Temperature: 1, TopP: 1, IgnoreEOS: req.IgnoreEOS,
		StopTokenIDs: req.StopTokenIDs, Logprobs: req.Logprobs != nil, PromptLogprobs: req.Logprobs != nil && req.Echo}
	if req.Logprobs != nil {
		base.TopLogprobs = *req.Logprobs
	}
	if err := setSampling(&base, req); err != nil {
		return nil, err
	}
	job := &completionJob{reqs: make([]Request, 0, len(prompts)*n), echo: req.Echo, stops: stops, stream: req.Stream,
		includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage, returnTokenIDs: req.ReturnTokenIDs,
		continues: s.decoderOnly()}
	for _, p := range prompts {
		job.promptTokens += len(p)
		for j := range n {
			q := base
			q.Prompt = p
			if req.Seed != nil {
				seed := *req.Seed + int64(j) // else the n choices of a seeded request would be one
				q.Seed = &seed
			}
			job.reqs = append(job.reqs, q)
		}
	}
	return job, nil
}

// setSampling sets max_tokens, temperature, top_p and the penalties of r from req (the server's
// check bounds them).
func setSampling(r *Request, req *CompletionRequest) error {
	if req.MaxTokens != nil {
		r.MaxTokens = *req.MaxTokens
	}
	if req.Temperature != nil {
		r.Temperature = *req.Temperature
	}
	if req.TopP != nil {
		if *req.TopP <= 0 {
			return badRequest("top_p", "top_p is %v, want 0 < top_p ≤ 1", *req.TopP)
		}
		r.TopP = *req.TopP
	}
	if req.PresencePenalty != nil {
		r.PresencePenalty = *req.PresencePenalty
	}
	if req.FrequencyPenalty != nil {
		r.FrequencyPenalty = *req.FrequencyPenalty
	}
	return nil
}

// parseStop reads stop: a string or a list of up to MaxStops non-empty strings, which need the
// tokenizer (they are matched on the text).
func (s *Server) parseStop(raw json.RawMessage) ([]string, error) {
	if isEmptyJSON(raw) {
		return nil, nil
	}
	var stops []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		stops = []string{one}
	} else if json.Unmarshal(raw, &stops) != nil {
		return nil, badRequest("stop", "stop must be a string or a list of strings")
	}
	if len(stops) > MaxStops {
		return nil, badRequest("stop", "%d stop strings, at most %d", len(stops), MaxStops)
	}
	for i, stop := range stops {
		if stop == "" {
			return nil, badRequest("stop", "stop string %d is empty", i)
		}
	}
	if s.cfg.Tokenizer == nil {
		return nil, badRequest("stop", "stop strings need the model's tokenizer, which it does not have; stop_token_ids work without")
	}
	return stops, nil
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
