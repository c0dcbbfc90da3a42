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

	"github.com/pregate/pregate/engine"
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
	{ErrTimeout, http.StatusGatewayTimeout, "server_error", "timeout"},
	{engine.ErrExpertUnavailable, http.StatusServiceUnavailable, "server_error", "expert_unavailable"},
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
		if status >= 500 && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrTimeout) {
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
	if status == http.StatusTooManyRequests || errors.Is(err, engine.ErrExpertUnavailable) {
		w.Header().Set("Retry-After", "1") // a store back, a placement moved: worth another try
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
//	POST /v1/completions   completions of token-id or text prompts (JSON, or server-sent events with stream)
//	POST /v1/chat/completions  chat: messages rendered with the model's chat template
//	GET  /v1/models        the model, as OpenAI lists models; GET /v1/models/{id} one
//	GET  /health           200 while the server is up (liveness)
//	GET  /ready            200 once Config.Ready returns nil, else 503 with its error (readiness)
//	GET  /metrics          the Prometheus registry
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", s.counted(s.complete))
	mux.HandleFunc("POST /v1/chat/completions", s.counted(s.chat))
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

// Params are the request fields /v1/completions and /v1/chat/completions share: OpenAI's, and
// vLLM's ignore_eos, stop_token_ids and return_token_ids.
type Params struct {
	Model         string         `json:"model"`
	MaxTokens     *int           `json:"max_tokens"`  // default: 16 for completions; chat: what fits
	Temperature   *float64       `json:"temperature"` // default 1; 0 is greedy
	TopP          *float64       `json:"top_p"`       // default 1
	Seed          *int64         `json:"seed"`        // choice j of a prompt is seeded Seed+j
	Stream        bool           `json:"stream"`
	StreamOptions *StreamOptions `json:"stream_options"`
	IgnoreEOS     bool           `json:"ignore_eos"`
	// N is the choices per prompt (default 1): prompt i's are choices i·N … i·N+N−1.
	N *int `json:"n"`
	// Stop is a string or up to 4 (MaxStops), matched on the text (a tokenizer is needed): the
	// choice ends before the first match, which its text leaves out (finish_reason "stop").
	Stop             json.RawMessage `json:"stop"`
	StopTokenIDs     []int           `json:"stop_token_ids"`
	PresencePenalty  *float64        `json:"presence_penalty"`  // in [-2, 2]; default 0
	FrequencyPenalty *float64        `json:"frequency_penalty"` // in [-2, 2]; default 0
	ReturnTokenIDs   bool            `json:"return_token_ids"`
	User             string          `json:"user"` // an end-user id for the client's own records; ignored
}

// CompletionRequest is the body of POST /v1/completions. A field it does not know is a 400 naming
// it, as OpenAI answers.
type CompletionRequest struct {
	Params
	// Prompt is a list of token ids, or a list of such lists (n choices each); with a tokenizer
	// also a string, or a list of strings (encoded with the model's BOS/EOS as it adds them).
	Prompt json.RawMessage `json:"prompt"`
	// Logprobs asks for the legacy logprobs object with this many most likely tokens (≤ 20).
	Logprobs *int `json:"logprobs"`
	// Echo puts the prompt's text before the completion's (and, with logprobs, its tokens' logprobs).
	Echo bool `json:"echo"`
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

// counted serves with h and counts the request by the HTTP status h returns.
func (s *Server) counted(h func(http.ResponseWriter, *http.Request) int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.metrics.requests.WithLabelValues(strconv.Itoa(h(w, r))).Inc()
	}
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
	return s.serveJob(w, r, job, &completionPresenter{responseHead{ID: "cmpl-" + rand.Text(), Created: time.Now().Unix(), Model: s.cfg.ModelName}})
}

// presenter shapes a job's results as one API answers: whole, or as streamed chunks.
type presenter interface {
	// whole is the answer to a request that did not stream.
	whole(choices []*choiceState, usage *Usage) any
	// start is the first chunk of a choice, before its events (nil: none).
	start(c *choiceState) any
	// chunk is what is new in c since its last chunk.
	chunk(c *choiceState) any
	// usage is the last chunk, with stream_options.include_usage.
	usage(u *Usage) any
}

// responseHead is what every response and chunk of one request carries.
type responseHead struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
}

// completionPresenter answers /v1/completions.
type completionPresenter struct{ head responseHead }

func (p *completionPresenter) completion(choices []Choice, u *Usage) *Completion {
	return &Completion{ID: p.head.ID, Object: "text_completion", Created: p.head.Created, Model: p.head.Model, Choices: choices, Usage: u}
}

func (p *completionPresenter) whole(choices []*choiceState, u *Usage) any {
	out := make([]Choice, len(choices))
	for i, c := range choices {
		out[i] = c.whole()
	}
	return p.completion(out, u)
}

func (p *completionPresenter) start(*choiceState) any { return nil }

func (p *completionPresenter) chunk(c *choiceState) any {
	ch, _ := c.chunk()
	return p.completion([]Choice{ch}, nil)
}

func (p *completionPresenter) usage(u *Usage) any { return p.completion([]Choice{}, u) }

// serveJob runs a checked job and answers with p's shapes; it returns the HTTP status.
func (s *Server) serveJob(w http.ResponseWriter, r *http.Request, job *completionJob, p presenter) int {
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
	if job.stream {
		return s.stream(w, c, choices, job, p)
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
	writeJSON(w, http.StatusOK, p.whole(choices, usageOf(job, choices)))
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

// stream answers with server-sent events: each choice's start chunk if p has one, a chunk per
// event of a choice (a token, the prompt's logprobs, its end with finish_reason), the usage if
// asked for, then data: [DONE]. A failure sends an error event instead of the rest.
func (s *Server) stream(w http.ResponseWriter, c *call, choices []*choiceState, job *completionJob, p presenter) int {
	sse, err := startSSE(w)
	if err != nil {
		return statusClientClosed
	}
	for _, ch := range choices {
		if v := p.start(ch); v != nil {
			sse.send(v)
		}
	}
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
			sse.send(p.chunk(ch))
		}
		if err := sse.flush(); err != nil {
			return statusClientClosed
		}
	}
	if job.includeUsage {
		sse.send(p.usage(usageOf(job, choices)))
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
	return decodeRequest(body, v)
}

// decodeRequest decodes one JSON object into v; a field v does not have is a 400 naming it.
func decodeRequest(body []byte, v any) error {
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
	if re := (*requestError)(nil); errors.As(err, &re) {
		return err // from a field's own UnmarshalJSON
	}
	if te := (*json.UnmarshalTypeError)(nil); errors.As(err, &te) && te.Field != "" {
		field := strings.TrimPrefix(te.Field, "Params.") // the embedded struct's Go name: not the client's
		return badRequest(field, "%s: expected %s, got a JSON %s", field, te.Type, te.Value)
	}
	// encoding/json has no type for this one; its text is `json: unknown field "name"`.
	if quoted, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if field, err := strconv.Unquote(quoted); err == nil {
			return badRequest(field, "unrecognized request argument supplied: %s", field)
		}
	}
	return badRequest("", "the request body is not valid JSON: %v", err)
}

// parse checks a completion request and turns it into one Request per choice.
func (s *Server) parse(req *CompletionRequest) (*completionJob, error) {
	if err := s.checkModel(req.Model); err != nil {
		return nil, err
	}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	switch {
	case req.BestOf != nil && *req.BestOf != 1 && *req.BestOf != n:
		return nil, badRequest("best_of", "best_of = %d is not supported, only 1 or n", *req.BestOf)
	case req.Logprobs != nil && (*req.Logprobs < 0 || *req.Logprobs > MaxTopLogprobs):
		return nil, badRequest("logprobs", "logprobs is %d, want 0 ≤ logprobs ≤ %d", *req.Logprobs, MaxTopLogprobs)
	}
	prompts, err := s.parsePrompt(req.Prompt)
	if err != nil {
		return nil, err
	}
	base := Request{MaxTokens: min(16, s.cfg.MaxTokens), Logprobs: req.Logprobs != nil, PromptLogprobs: req.Logprobs != nil && req.Echo}
	if req.Logprobs != nil {
		base.TopLogprobs = *req.Logprobs
	}
	job, err := s.newJob(&req.Params, prompts, base)
	if err != nil {
		return nil, err
	}
	job.echo = req.Echo
	return job, nil
}

func (s *Server) checkModel(name string) error {
	if name != "" && name != s.cfg.ModelName {
		return fmt.Errorf("%w: the model `%s` does not exist", errModelNotFound, name)
	}
	return nil
}

// maxN bounds n, as OpenAI does.
const maxN = 128

// newJob makes the job of prompts under p: n choices each, from base with p's sampling.
func (s *Server) newJob(p *Params, prompts [][]int, base Request) (*completionJob, error) {
	n := 1
	if p.N != nil {
		n = *p.N
	}
	if n < 1 || n > maxN {
		return nil, badRequest("n", "n is %d, want 1 ≤ n ≤ %d", n, maxN)
	}
	stops, err := s.parseStop(p.Stop)
	if err != nil {
		return nil, err
	}
	base.Temperature, base.TopP, base.IgnoreEOS, base.StopTokenIDs = 1, 1, p.IgnoreEOS, p.StopTokenIDs
	if err := setSampling(&base, p); err != nil {
		return nil, err
	}
	job := &completionJob{reqs: make([]Request, 0, len(prompts)*n), stops: stops, stream: p.Stream,
		includeUsage: p.StreamOptions != nil && p.StreamOptions.IncludeUsage, returnTokenIDs: p.ReturnTokenIDs,
		continues: s.decoderOnly()}
	for _, prompt := range prompts {
		job.promptTokens += len(prompt)
		for j := range n {
			q := base
			q.Prompt = prompt
			if p.Seed != nil {
				seed := *p.Seed + int64(j) // else the n choices of a seeded request would be one
				q.Seed = &seed
			}
			job.reqs = append(job.reqs, q)
		}
	}
	return job, nil
}

// setSampling sets max_tokens, temperature, top_p and the penalties of r from p (the server's
// check bounds them).
func setSampling(r *Request, p *Params) error {
	if p.MaxTokens != nil {
		r.MaxTokens = *p.MaxTokens
	}
	if p.Temperature != nil {
		r.Temperature = *p.Temperature
	}
	if p.TopP != nil {
		if *p.TopP <= 0 {
			return badRequest("top_p", "top_p is %v, want 0 < top_p ≤ 1", *p.TopP)
		}
		r.TopP = *p.TopP
	}
	if p.PresencePenalty != nil {
		r.PresencePenalty = *p.PresencePenalty
	}
	if p.FrequencyPenalty != nil {
		r.FrequencyPenalty = *p.FrequencyPenalty
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
