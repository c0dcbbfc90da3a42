// Package serve is the worker's front door: an OpenAI-compatible HTTP API over a
// continuous-batching scheduler that owns one engine.Model.
//
//	POST /v1/completions, /v1/chat/completions (messages ──▶ chat template ──▶ one prompt)
//	    ──▶ parse and check (400, 404, 413) ──▶ submit: n sequences per prompt
//	    into the bounded waiting queue (429 with Retry-After when it is full)
//	scheduler goroutine, in a loop: admit waiting sequences up to MaxRunning (one Model.Start for
//	    all of them) ──▶ one Model.Step of every running sequence ──▶ sample a token for each
//	    ──▶ post it to its caller ──▶ drop the finished and the cancelled
//	caller: tokens ──▶ one JSON completion, or server-sent events ending in data: [DONE]
//
// The engine is not safe for concurrent use, so only the scheduler goroutine calls it. Callers never
// block the scheduler: each has a mailbox the scheduler appends to. A Step's context is cancelled
// when every request in its batch has gone (so the expert fetches they wait on stop) and when the
// server closes. Generate is the same path without HTTP, for tests and benchmarks.
//
// Prompts are token ids, or text when the model came with a tokenizer (Config.Tokenizer): then
// "text" carries the completion, streamed one whole character at a time (tokenizer.Stream).
// Completions also come back as token ids with return_token_ids. As in OpenAI's API, temperature
// defaults to 1 over HTTP; send temperature 0 for greedy decoding, which matches engine.Generate
// token for token.
//
// The scheduler knows tokens only: it samples (with penalties), computes logprobs and ends a
// sequence on EOS, a stop token or max_tokens. Text is the caller's (choice.go): decoding, echo,
// and stop strings, matched on the decoded text; a match marks the sequence stopped and the
// scheduler drops it at the next step boundary.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/chattemplate"
	"github.com/pregate/pregate/model/tokenizer"
)

// Errors returned by Generate (and mapped to HTTP statuses by the handler).
var (
	// ErrBadRequest wraps every parameter error (HTTP 400).
	ErrBadRequest = errors.New("serve: bad request")
	// ErrOverloaded is returned when the waiting queue is full (HTTP 429 with Retry-After).
	ErrOverloaded = errors.New("serve: too many requests waiting")
	// ErrClosed is returned once the server is closing (HTTP 503).
	ErrClosed = errors.New("serve: server closed")
	// ErrTimeout ends a request that ran past Config.RequestTimeout (HTTP 504; a stream gets it
	// as an error event after the tokens it had).
	ErrTimeout = errors.New("serve: request timed out")
)

// Config configures a Server.
type Config struct {
	// ModelName is the id GET /v1/models lists and the "model" a request must name (a request
	// without one is accepted).
	ModelName string
	// Model decodes. The server calls it from its scheduler goroutine only and does not close it.
	Model engine.Model
	// ComputePriority is given to the scheduler goroutine's thread, the one that calls the model
	// (compute.Raise): above normal, the model's compute goes before the fetch path on
	// shared cores. The worker checks that it can be had first (compute.CheckPriority).
	ComputePriority compute.Priority
	// Tokenizer, when set, lets prompts be text and fills the completions' text; nil: token ids
	// only (a text prompt gets 400).
	Tokenizer *tokenizer.Tokenizer
	// MaxRunning bounds the sequences decoded together in one Step.
	MaxRunning int
	// MaxBatchedTokens bounds the tokens one Step runs (vLLM's max_num_batched_tokens): the
	// decoding sequences' one token each, then chunks of the prompts being prefilled, so a long
	// prompt is prefilled over several Steps while the others keep decoding and short prompts
	// start. Decoder-only models only: an encoder-decoder model encodes its prompt whole in Start.
	// 0: no bound (each prompt is prefilled in one Step). Otherwise at least MaxRunning.
	MaxBatchedTokens int
	// KVCacheBytes, when positive, bounds the bytes the running sequences' caches may reach: a
	// sequence is admitted only once its worst case (engine.Info.AdmitBytes of its prompt and
	// max_tokens) fits beside the others' reservations, so no request can make the worker allocate
	// beyond it. One that could never fit gets 400; others wait in the queue, oldest first.
	// 0: no bound.
	KVCacheBytes int64
	// Preemption, with KVCacheBytes, admits a sequence once what it needs now fits (its prompt and
	// a block of 16 tokens) instead of its worst case, and grows its reservation as it generates;
	// when a sequence's next token does not fit the budget, the newest running sequences are
	// preempted (vLLM's recompute preemption): each drops its cache and goes back to the front of
	// the queue, to be prefilled again (prompt and the tokens it had generated) when there is room
	// for its worst case (so it is preempted once at most). More sequences run at once; a preempted one pays its prefill again, and a reservation that
	// grows copies the cache it has (Reserve). false: every sequence reserves its worst case and
	// nothing is ever preempted.
	Preemption bool
	// QueueTimeout, when positive, bounds how long a sequence waits in the queue to be admitted
	// (for cache room or a running slot): beyond it its request gets ErrOverloaded (429 with
	// Retry-After, or an error event once a stream has begun).
	QueueTimeout time.Duration
	// RequestTimeout, when positive, bounds a request's life from its submission: a sequence still
	// generating then ends with ErrTimeout at the next step boundary. 0: no bound.
	RequestTimeout time.Duration
	// MaxWaiting bounds the sequences submitted but not yet running; beyond it requests get
	// ErrOverloaded (429 with Retry-After).
	MaxWaiting int
	// MaxBodyBytes bounds a request body (413 beyond).
	MaxBodyBytes int64
	// MaxTokens bounds max_tokens (a request asking for more gets 400). A request without
	// max_tokens gets 16, OpenAI's default, or MaxTokens if that is smaller.
	MaxTokens int
	// MaxModelLen, when positive, bounds prompt plus max_tokens of one sequence (400 beyond): set it
	// to the model's positions (Mixtral's max_position_embeddings), since a Step that overflows
	// them fails its whole batch. 0 checks nothing.
	MaxModelLen int
	// Ready reports whether the worker can serve (dense weights loaded, placement synced): /ready
	// answers 503 with its error text while it returns an error. Nil: always ready.
	Ready func() error
	// Registry receives the server's metrics and is served whole at /metrics, so metrics other
	// components register there (per MoE block stalls, fetches, cache and prediction hits) appear
	// too. Nil: a new registry with the Go and process collectors.
	Registry *prometheus.Registry
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults; ModelName and Model must still be set.
func DefaultConfig() Config {
	return Config{
		MaxRunning:       64,      // sequences per Step
		MaxBatchedTokens: 512,     // tokens per Step: vLLM's default for chunked prefill
		MaxWaiting:       256,     // queued sequences before 429
		MaxBodyBytes:     1 << 20, // 1 MiB of JSON
		MaxTokens:        4096,    // per sequence
		QueueTimeout:     time.Minute,
	}
}

// Validate reports a configuration the server cannot run with.
func (c Config) Validate() error {
	switch {
	case c.ModelName == "":
		return errors.New("serve: config: empty model name")
	case c.Model == nil:
		return errors.New("serve: config: no model")
	case c.MaxRunning < 1 || c.MaxWaiting < 1:
		return fmt.Errorf("serve: config: max running %d, max waiting %d, want ≥ 1", c.MaxRunning, c.MaxWaiting)
	case c.MaxBatchedTokens != 0 && c.MaxBatchedTokens < c.MaxRunning:
		return fmt.Errorf("serve: config: max batched tokens %d, want 0 or ≥ max running %d", c.MaxBatchedTokens, c.MaxRunning)
	case c.KVCacheBytes < 0 || c.QueueTimeout < 0 || c.RequestTimeout < 0:
		return fmt.Errorf("serve: config: KV cache bytes %d, queue timeout %v, request timeout %v", c.KVCacheBytes, c.QueueTimeout, c.RequestTimeout)
	case c.Preemption && c.KVCacheBytes == 0:
		return errors.New("serve: config: preemption needs a KV-cache budget (KVCacheBytes)")
	case c.MaxBodyBytes < 1 || c.MaxTokens < 1 || c.MaxModelLen < 0:
		return fmt.Errorf("serve: config: max body bytes %d, max tokens %d, max model len %d",
			c.MaxBodyBytes, c.MaxTokens, c.MaxModelLen)
	}
	return nil
}

// Request is one sequence to generate.
type Request struct {
	// Prompt is the token ids to continue (the encoder input of an encoder-decoder model).
	Prompt []int
	// MaxTokens bounds the tokens generated (≥ 1).
	MaxTokens int
	// Temperature 0 decodes greedily; above 0 tokens are sampled from softmax(logits/Temperature).
	Temperature float64
	// TopP keeps the smallest set of most likely tokens whose probability reaches it (nucleus
	// sampling); 0 means 1, all tokens.
	TopP float64
	// Seed makes sampling reproducible; nil seeds at random.
	Seed *int64
	// IgnoreEOS generates past end-of-sequence tokens, up to MaxTokens.
	IgnoreEOS bool
	// StopTokenIDs end the sequence as an EOS token does (finish "stop", the token included), even
	// with IgnoreEOS: vLLM's stop_token_ids.
	StopTokenIDs []int
	// PresencePenalty and FrequencyPenalty, each in [-2, 2], lower the logit of every token already
	// generated by PresencePenalty once and FrequencyPenalty per time it was generated (OpenAI's
	// definition; the prompt's tokens do not count). Negative values favour repetition.
	PresencePenalty, FrequencyPenalty float64
	// Logprobs asks for each generated token's log-probability and those of the TopLogprobs most
	// likely tokens at its position (≤ MaxTopLogprobs), of the model's distribution (before
	// temperature, top_p and penalties).
	Logprobs    bool
	TopLogprobs int
	// PromptLogprobs asks for the same of every prompt token after the first: it costs the logits
	// of every prompt position, so decoder-only models only (for an encoder-decoder model the
	// prompt is the encoder's input, which has none).
	PromptLogprobs bool
}

// MaxTopLogprobs bounds Request.TopLogprobs (vLLM's default limit).
const MaxTopLogprobs = 20

// maxPenalty bounds the presence and frequency penalties, as OpenAI does.
const maxPenalty = 2

// Server serves one model: the scheduler that decodes with it and the HTTP API over that.
type Server struct {
	cfg     Config
	raised  *compute.Raised // the scheduler goroutine's raised thread (ComputePriority), or nil
	info    engine.Info
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metrics
	created int64   // unix seconds, for /v1/models
	scratch scratch // the scheduler's
	// logitsTokens bounds a Step that returns every position's logits: promptLogprobsTokens (tests
	// set less before the first request).
	logitsTokens int

	chatTemplate    *chattemplate.Template // nil: chat requests get 400 with chatTemplateErr
	chatTemplateErr error

	mu      sync.Mutex
	waiting []*sequence // FIFO
	closed  bool
	wake    chan struct{} // cap 1: something was submitted

	g    *lifecycle.Group // the scheduler goroutine; its failure is the server's
	ctx  context.Context  // g's: cancelled by Close, it stops the scheduler and any Step in flight
	once sync.Once
}

// New checks cfg, registers the metrics and starts the scheduler goroutine.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	info := cfg.Model.Info()
	if info.VocabSize < 1 {
		return nil, fmt.Errorf("serve: model has vocabulary size %d", info.VocabSize)
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, info: info, log: cfg.Logger, reg: reg, metrics: m, created: time.Now().Unix(),
		logitsTokens: promptLogprobsTokens, wake: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "serve", "model", cfg.ModelName)
	// A template that does not parse costs the chat endpoint, not the server.
	if s.chatTemplate, s.chatTemplateErr = parseChatTemplate(cfg.Tokenizer); s.chatTemplateErr != nil && cfg.Tokenizer != nil {
		s.log.Warn("chat completions are off", "err", s.chatTemplateErr)
	}
	s.g = lifecycle.NewGroup()
	s.ctx = s.g.Context()
	s.g.Go("scheduler", s.schedule)
	return s, nil
}

// Err reports the server's fatal failure (the scheduler died: the model panicked), nil while it
// serves (and after a Close that no failure caused).
func (s *Server) Err() error { return s.g.Err() }

// Failed is closed when the server fails (Err says why).
func (s *Server) Failed() <-chan struct{} { return s.g.Failed() }

// Serve blocks until ctx ends (then it closes the server and returns nil) or the server fails (it
// closes it and returns the failure). A worker serves its Server through its own Serve instead.
func (s *Server) Serve(ctx context.Context) error { return lifecycle.Serve(ctx, s) }

// Close stops the scheduler: running and waiting requests fail with ErrClosed, later ones get it
// at once. It waits for the scheduler to exit (so the model is no longer in use) and unregisters
// the server's metrics. It does not close the model. Close is idempotent.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.g.Stop()
		s.metrics.unregister(s.reg)
	})
	return nil
}

// Generate decodes one prompt, calling emit (if not nil) with each token in order on the caller's
// goroutine, and returns why generation stopped: "stop" (an EOS token, included) or "length"
// (MaxTokens). It returns an error wrapping ErrBadRequest for bad parameters, ErrOverloaded when
// the waiting queue is full, ErrClosed when the server closes, the engine's error when a Step
// fails, or ctx's error: cancelling ctx removes the sequence at the next step boundary.
func (s *Server) Generate(ctx context.Context, req Request, emit func(token int)) (finish string, err error) {
	c, err := s.submit(ctx, []Request{req})
	if err != nil {
		return "", err
	}
	defer s.withdraw(c)
	var evs []event
	for finish == "" {
		if evs, err = c.next(evs); err != nil {
			return "", err
		}
		for _, ev := range evs {
			switch {
			case ev.err != nil:
				return "", ev.err
			case ev.isPrompt:
			case ev.finish != "":
				finish = ev.finish
			case emit != nil:
				emit(ev.token)
			}
		}
	}
	return finish, nil
}

// requestError is a bad parameter: its message and param go to the client as they are.
type requestError struct {
	param, msg string
}

func badRequest(param, format string, args ...any) error {
	return &requestError{param: param, msg: fmt.Sprintf(format, args...)}
}

func (e *requestError) Error() string { return "serve: bad request: " + e.msg }
func (e *requestError) Unwrap() error { return ErrBadRequest }

// check reports what is wrong with req, before it is queued.
func (s *Server) check(req Request) error {
	if len(req.Prompt) == 0 {
		return badRequest("prompt", "prompt is empty")
	}
	for i, id := range req.Prompt {
		if id < 0 || id >= s.info.VocabSize {
			return badRequest("prompt", "token id %d at position %d is out of range [0, %d)", id, i, s.info.VocabSize)
		}
	}
	switch {
	case req.MaxTokens < 1:
		return badRequest("max_tokens", "max_tokens is %d, want at least 1", req.MaxTokens)
	case req.MaxTokens > s.cfg.MaxTokens:
		return badRequest("max_tokens", "max_tokens is %d, more than the server's limit of %d", req.MaxTokens, s.cfg.MaxTokens)
	case s.cfg.MaxModelLen > 0 && len(req.Prompt)+req.MaxTokens > s.cfg.MaxModelLen:
		return badRequest("max_tokens", "this model's maximum context length is %d tokens; %d were requested (%d in the prompt, %d in the completion)",
			s.cfg.MaxModelLen, len(req.Prompt)+req.MaxTokens, len(req.Prompt), req.MaxTokens)
	case s.cfg.KVCacheBytes > 0 && s.info.AdmitBytes(len(req.Prompt), req.MaxTokens) > s.cfg.KVCacheBytes:
		return badRequest("max_tokens", "%d prompt tokens and max_tokens %d need %d bytes of KV cache, more than the worker's %d",
			len(req.Prompt), req.MaxTokens, s.info.AdmitBytes(len(req.Prompt), req.MaxTokens), s.cfg.KVCacheBytes)
	case !(req.Temperature >= 0) || req.Temperature > maxTemperature:
		return badRequest("temperature", "temperature is %v, want 0 ≤ temperature ≤ %v", req.Temperature, maxTemperature)
	case !(req.TopP >= 0 && req.TopP <= 1):
		return badRequest("top_p", "top_p is %v, want 0 < top_p ≤ 1", req.TopP)
	case !(math.Abs(req.PresencePenalty) <= maxPenalty):
		return badRequest("presence_penalty", "presence_penalty is %v, want -2 ≤ presence_penalty ≤ 2", req.PresencePenalty)
	case !(math.Abs(req.FrequencyPenalty) <= maxPenalty):
		return badRequest("frequency_penalty", "frequency_penalty is %v, want -2 ≤ frequency_penalty ≤ 2", req.FrequencyPenalty)
	case req.TopLogprobs < 0 || req.TopLogprobs > MaxTopLogprobs:
		return badRequest("logprobs", "logprobs is %d, want 0 ≤ logprobs ≤ %d", req.TopLogprobs, MaxTopLogprobs)
	case req.PromptLogprobs && !s.decoderOnly():
		return badRequest("echo", "prompt logprobs (echo with logprobs) need a decoder-only model; %s is encoder-decoder", s.info.Arch)
	}
	for _, id := range req.StopTokenIDs {
		if id < 0 || id >= s.info.VocabSize {
			return badRequest("stop_token_ids", "stop token id %d is out of range [0, %d)", id, s.info.VocabSize)
		}
	}
	return nil
}

// decoderOnly reports a model whose prompt is the start of the sequence it generates (Mixtral),
// not an encoder's input (Switch Transformers).
func (s *Server) decoderOnly() bool { return s.info.Arch == model.ModelTypeMixtral }

// maxTemperature bounds temperature (finite; far beyond any useful value).
const maxTemperature = 1e6
