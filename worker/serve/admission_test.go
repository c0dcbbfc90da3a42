package serve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pregate/pregate/engine"
)

// stepLog is a model that records, per Step, the pending tokens of each sequence it runs.
type stepLog struct {
	engine.Model
	mu    sync.Mutex
	steps [][]stepEntry
}

type stepEntry struct {
	seq     *engine.Sequence
	pending int
}

func (m *stepLog) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	entries := make([]stepEntry, len(seqs))
	for i, s := range seqs {
		entries[i] = stepEntry{s, len(s.Pending)}
	}
	m.mu.Lock()
	m.steps = append(m.steps, entries)
	m.mu.Unlock()
	return m.Model.Step(ctx, seqs, all)
}

// TestChunkedPrefillGolden: prompts prefilled a few tokens per Step give the golden completions,
// and the same prompt logprobs as prompts prefilled whole (to float32 rounding: the matrix products
// see other row counts).
func TestChunkedPrefillGolden(t *testing.T) {
	prompts, want := goldenPrompts(t, fixtureDir("mixtral-tiny"))
	m := loadModel(t, "mixtral-tiny")
	whole := newTestServer(t, "mixtral-tiny", m, func(c *Config) { c.MaxBatchedTokens = 0 })
	chunked := newTestServer(t, "mixtral-tiny", m, func(c *Config) { c.MaxRunning, c.MaxBatchedTokens = 2, 2 })

	c := chunked.complete(t, map[string]any{"prompt": prompts, "max_tokens": 10, "temperature": 0, "return_token_ids": true})
	for i, ch := range c.Choices {
		if !slices.Equal(ch.TokenIDs, want[i]) {
			t.Errorf("chunked prompt %d: %v, golden %v", i, ch.TokenIDs, want[i])
		}
	}
	body := map[string]any{"prompt": prompts, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": true}
	a, b := whole.complete(t, body).Choices, chunked.complete(t, body).Choices
	for i := range a {
		la, lb := a[i].Logprobs, b[i].Logprobs
		if !slices.Equal(la.Tokens, lb.Tokens) || len(la.TokenLogprobs) != len(lb.TokenLogprobs) {
			t.Fatalf("choice %d: tokens %v, chunked %v", i, la.Tokens, lb.Tokens)
		}
		for j, p := range la.TokenLogprobs {
			if q := lb.TokenLogprobs[j]; (p == nil) != (q == nil) || p != nil && math.Abs(float64(*p-*q)) > 1e-5 {
				t.Errorf("choice %d position %d: logprob %v, chunked %v", i, j, p, q)
			}
		}
	}
}

// TestChunkedPrefillShortFirst: a short prompt sent beside a long one gets its first token from the
// first Step and decodes while the long one is prefilled in chunks; no Step exceeds the budget.
func TestChunkedPrefillShortFirst(t *testing.T) {
	const budget = 8
	long := make([]int, 40)
	for i := range long {
		long[i] = 1 + i
	}
	short := []int{5, 6, 7}
	ref := loadModel(t, "mixtral-tiny")
	res, _, err := engine.Generate(context.Background(), ref, [][]int{long, short}, engine.GenerateOptions{MaxNewTokens: 6, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	m := &stepLog{Model: loadModel(t, "mixtral-tiny")}
	ts := newTestServer(t, "mixtral-tiny", m, func(c *Config) { c.MaxRunning, c.MaxBatchedTokens = 2, budget })
	c := ts.complete(t, map[string]any{"prompt": [][]int{long, short}, "max_tokens": 6, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
	for i, ch := range c.Choices {
		if !slices.Equal(ch.TokenIDs, res[i].GeneratedIDs) {
			t.Errorf("prompt %d: %v, unchunked %v", i, ch.TokenIDs, res[i].GeneratedIDs)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	first := m.steps[0]
	if len(first) != 2 || first[0].pending != len(short) || first[1].pending != budget-len(short) {
		t.Fatalf("first step %+v, want the short prompt whole and %d tokens of the long one", first, budget-len(short))
	}
	shortSeq, longSeq := first[0].seq, first[1].seq
	fed, prefillSteps, shortDecodes := 0, 0, 0
	for i, step := range m.steps {
		total := 0
		for _, e := range step {
			total += e.pending
			switch {
			case e.seq == longSeq && fed < len(long):
				fed += e.pending
				prefillSteps++
			case e.seq == shortSeq && i > 0 && fed < len(long):
				shortDecodes++
			}
		}
		if total > budget {
			t.Errorf("step %d runs %d tokens, more than the budget %d", i, total, budget)
		}
	}
	// 5 + 7·5 = 40: the long prompt takes 6 Steps, and the short one decodes in each after the first.
	if prefillSteps != 6 || shortDecodes != 5 {
		t.Errorf("the long prompt took %d steps (want 6); the short one decoded %d tokens meanwhile (want 5)", prefillSteps, shortDecodes)
	}
}

// TestKVCacheBudget: a request whose worst-case cache exceeds the budget gets 400 naming it; one
// that does not fit beside the running ones waits, and gets 429 with Retry-After past the queue
// timeout; once the cache frees, requests run again.
func TestKVCacheBudget(t *testing.T) {
	m := loadModel(t, "switch-tiny")
	info := m.Info()
	budget := info.AdmitBytes(3, 2000) + info.AdmitBytes(3, 2)/2
	ts := newTestServer(t, "switch-tiny", m, func(c *Config) { c.KVCacheBytes, c.QueueTimeout = budget, 100*time.Millisecond })

	resp, b := post(t, context.Background(), ts.url, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 4000})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a request beyond the budget: status %d: %s", resp.StatusCode, b)
	}
	checkError(t, b, "invalid_request_error", "max_tokens", strconv.FormatInt(budget, 10))

	_, stopLong := streamUntil(t, ts, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2000, "temperature": 0, "ignore_eos": true, "stream": true}, 1)
	defer stopLong()
	short := map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2, "temperature": 0}
	resp, b = post(t, context.Background(), ts.url, short)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q, want 429 with Retry-After: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	checkError(t, b, "rate_limit_error", "", "waited")
	if got, want := metricValue(t, ts.reg, "pregate_kv_cache_reserved_bytes"), float64(info.AdmitBytes(3, 2000)); got != want {
		t.Errorf("reserved bytes metric %v, want the long request's %v", got, want)
	}
	stopLong()
	if c := ts.complete(t, short); c.Usage.CompletionTokens != 2 {
		t.Fatalf("after the long request: %+v", c)
	}
}

// TestRequestTimeout: a request running past the timeout ends with 504 (whole) or, streamed, with
// an error event after the tokens it had.
func TestRequestTimeout(t *testing.T) {
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) { c.RequestTimeout = 50 * time.Millisecond })
	body := map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 4000, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504: %s", resp.StatusCode, b)
	}
	checkError(t, b, "server_error", "", "request timeout of 50ms")

	body["stream"] = true
	resp, b = post(t, context.Background(), ts.url, body)
	st := readStream(t, bytes.NewReader(b))
	if resp.StatusCode != http.StatusOK || len(st.tokens[0]) == 0 || len(st.tokens[0]) >= 4000 || len(st.errs) != 1 ||
		!strings.Contains(st.errs[0].Message, "request timeout") || !st.done {
		t.Fatalf("stream: status %d, %d tokens, errors %+v, done %v", resp.StatusCode, len(st.tokens[0]), st.errs, st.done)
	}
	if c := ts.complete(t, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2}); c.Usage.CompletionTokens != 2 {
		t.Fatalf("a short request after: %+v", c)
	}
}

// unavailableModel fails its Steps as a worker does when an expert's fetch failed on every replica.
type unavailableModel struct {
	engine.Model
	fail atomic.Bool
}

func (m *unavailableModel) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	if m.fail.Load() {
		return nil, fmt.Errorf("%w: expert {0 1}: every replica failed", engine.ErrExpertUnavailable)
	}
	return m.Model.Step(ctx, seqs, all)
}

// TestExpertUnavailable: a Step that could not get an expert answers 503 with Retry-After (an error
// id, not the fetch's text), and the server serves the next request.
func TestExpertUnavailable(t *testing.T) {
	m := &unavailableModel{Model: loadModel(t, "switch-tiny")}
	ts := newTestServer(t, "switch-tiny", m, nil)
	body := map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2}
	m.fail.Store(true)
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q, want 503 with Retry-After: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	checkError(t, b, "server_error", "", "error id")
	m.fail.Store(false)
	if c := ts.complete(t, body); c.Usage.CompletionTokens != 2 {
		t.Fatalf("after the store came back: %+v", c)
	}
}

// firstOfPairFails fails the first sequence of every two-sequence Step, as an unavailable expert
// that only its tokens were routed to would.
type firstOfPairFails struct{ engine.Model }

func (m firstOfPairFails) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	logits, err := m.Model.Step(ctx, seqs, all)
	if err != nil || len(seqs) != 2 {
		return logits, err
	}
	return logits, &engine.SequenceErrors{Failed: map[int]error{0: fmt.Errorf("%w: expert {0 3}", engine.ErrExpertUnavailable)}}
}

// TestExpertUnavailableFailsOnlyItsSequences: a Step that failed one of its sequences ends that one
// with the error and the other decodes on, as it would have alone.
func TestExpertUnavailableFailsOnlyItsSequences(t *testing.T) {
	m := loadModel(t, "switch-tiny")
	ts := newTestServer(t, "switch-tiny", firstOfPairFails{m}, nil)
	short := Request{Prompt: []int{5, 6, 7}, MaxTokens: 4, IgnoreEOS: true}
	res, _, err := engine.Generate(context.Background(), m, [][]int{short.Prompt}, engine.GenerateOptions{MaxNewTokens: 4, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	longErr := make(chan error, 1)
	go func() {
		var once sync.Once
		_, err := ts.Generate(context.Background(), Request{Prompt: []int{1, 2}, MaxTokens: 1000, IgnoreEOS: true}, func(int) {
			once.Do(func() { close(started) })
		})
		longErr <- err
	}()
	<-started
	var got []int
	finish, err := ts.Generate(context.Background(), short, func(tok int) { got = append(got, tok) })
	if err != nil || finish != "length" || !slices.Equal(got, res[0].GeneratedIDs) {
		t.Fatalf("the other sequence: %v %q %v, want %v length", got, finish, err, res[0].GeneratedIDs)
	}
	if err := <-longErr; !errors.Is(err, engine.ErrExpertUnavailable) {
		t.Fatalf("the failed sequence: %v, want ErrExpertUnavailable", err)
	}
}

// TestPromptLogprobsBounded: echo with logprobs never makes a Step return more than the logits
// bound's rows, with no token budget too, and its logprobs are the model's over the whole prompt.
func TestPromptLogprobsBounded(t *testing.T) {
	const bound = 16
	prompt := make([]int, 200)
	for i := range prompt {
		prompt[i] = 1 + (i*37)%500
	}
	ref := loadModel(t, "mixtral-tiny")
	seqs, err := ref.Start(context.Background(), [][]int{prompt})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ref.Step(context.Background(), seqs, true)
	if err != nil {
		t.Fatal(err)
	}
	vocab := ref.Info().VocabSize

	m := &stepLog{Model: loadModel(t, "mixtral-tiny")}
	ts := newTestServer(t, "mixtral-tiny", m, func(c *Config) { c.MaxRunning, c.MaxBatchedTokens = 4, 0 })
	ts.logitsTokens = bound // before the first request
	c := ts.complete(t, map[string]any{"prompt": prompt, "max_tokens": 2, "temperature": 0, "logprobs": 2, "echo": true})
	lps := c.Choices[0].Logprobs.TokenLogprobs
	if len(lps) != len(prompt)+2 || lps[0] != nil {
		t.Fatalf("%d logprobs (first %v), want %d: the prompt's (the first null) and 2 generated", len(lps), lps[0], len(prompt)+2)
	}
	for i := 1; i < len(prompt); i++ {
		want := logprobsOf(rows[0][(i-1)*vocab:i*vocab], prompt[i], 0).logprob
		if lps[i] == nil || math.Abs(float64(*lps[i]-want)) > 1e-4 {
			t.Fatalf("prompt position %d: logprob %v, want %v", i, lps[i], want)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	fed := 0
	for i, step := range m.steps {
		for _, e := range step {
			if e.pending > bound {
				t.Errorf("step %d fed %d tokens, more than the bound %d", i, e.pending, bound)
			}
			fed += e.pending
		}
	}
	if want := len(prompt) + 1; fed != want || len(m.steps) != (len(prompt)+bound-1)/bound+1 {
		t.Errorf("%d steps fed %d tokens, want the prompt in chunks of %d and one decode step (%d tokens)", len(m.steps), fed, bound, want)
	}
}

// callLog is a model that records its Starts (the prompts' lengths) and Steps (the sequences run).
type callLog struct {
	engine.Model
	mu    sync.Mutex
	calls []string
}

func (m *callLog) Start(ctx context.Context, prompts [][]int) ([]*engine.Sequence, error) {
	lens := make([]string, len(prompts))
	for i, p := range prompts {
		lens[i] = strconv.Itoa(len(p))
	}
	m.mu.Lock()
	m.calls = append(m.calls, "start "+strings.Join(lens, ","))
	m.mu.Unlock()
	return m.Model.Start(ctx, prompts)
}

func (m *callLog) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	m.mu.Lock()
	m.calls = append(m.calls, "step "+strconv.Itoa(len(seqs)))
	m.mu.Unlock()
	return m.Model.Step(ctx, seqs, all)
}

// TestEncoderStartsShortFirst: an encoder-decoder model's prompts admitted together start the
// fewest tokens first within the step's budget, so a short prompt decodes before a long one's
// encoder pass, and two long ones' passes have a decode step between them; the tokens are the
// same as when they start together.
func TestEncoderStartsShortFirst(t *testing.T) {
	long, short := countingPrompt(40), []int{5, 6, 7}
	checkCallOrder(t, []callOrderCase{
		{"short beside long", [][]int{long, short}, 8, []string{"start 3", "step 1", "start 40", "step 2"}},
		{"two long", [][]int{long, long}, 8, []string{"start 40", "step 1", "start 40", "step 2"}},
		{"both fit", [][]int{long, short}, 64, []string{"start 3,40", "step 2"}},
		{"no budget", [][]int{long, short}, 0, []string{"start 40,3", "step 2"}},
	}, func(t *testing.T) (engine.Model, *callLog) {
		m := &callLog{Model: loadModel(t, "switch-tiny")}
		return m, m
	})
}

// countingPrompt is the prompt 1, 2, ..., n.
func countingPrompt(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = 1 + i
	}
	return p
}

// callOrderCase is one case of the tests of the order in which the scheduler calls a model.
type callOrderCase struct {
	name    string
	prompts [][]int
	budget  int      // Config.MaxBatchedTokens
	want    []string // the first calls (callLog.calls)
}

// checkCallOrder serves each case's prompts (4 greedy tokens each, 2 running at most) through the
// switch-tiny model newModel makes, which logs its calls to the callLog it also returns: the
// tokens must be engine.Generate's on the prompts together, and the calls must begin with want.
func checkCallOrder(t *testing.T, cases []callOrderCase, newModel func(t *testing.T) (engine.Model, *callLog)) {
	t.Helper()
	ref := loadModel(t, "switch-tiny")
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			res, _, err := engine.Generate(context.Background(), ref, tt.prompts, engine.GenerateOptions{MaxNewTokens: 4, IgnoreEOS: true})
			if err != nil {
				t.Fatal(err)
			}
			m, log := newModel(t)
			ts := newTestServer(t, "switch-tiny", m, func(c *Config) { c.MaxRunning, c.MaxBatchedTokens = 2, tt.budget })
			c := ts.complete(t, map[string]any{"prompt": tt.prompts, "max_tokens": 4, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
			for i, ch := range c.Choices {
				if !slices.Equal(ch.TokenIDs, res[i].GeneratedIDs) {
					t.Errorf("prompt %d: %v, engine.Generate on the prompts together %v", i, ch.TokenIDs, res[i].GeneratedIDs)
				}
			}
			log.mu.Lock()
			defer log.mu.Unlock()
			if len(log.calls) < len(tt.want) || !slices.Equal(log.calls[:len(tt.want)], tt.want) {
				t.Errorf("calls %v, want them to begin %v", log.calls, tt.want)
			}
		})
	}
}

// cacheLog is a model that records the most decoder-cache tokens its Steps' sequences held at once.
type cacheLog struct {
	engine.Model
	mu   sync.Mutex
	peak int
}

func (m *cacheLog) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	n := 0
	for _, s := range seqs {
		n += s.Len() + len(s.Pending)
	}
	m.mu.Lock()
	m.peak = max(m.peak, n)
	m.mu.Unlock()
	return m.Model.Step(ctx, seqs, all)
}

// TestPreemption: with Preemption, two sequences that cannot both reach their worst case start
// together; when their caches no longer fit, the newer is preempted and recomputed later (once),
// and both give the tokens they give unconstrained. The caches never exceed the budget.
func TestPreemption(t *testing.T) {
	for _, tt := range []struct {
		name   string
		budget int // tokens per step: 8 recomputes a preempted sequence in chunks
	}{{"switch-tiny", 512}, {"mixtral-tiny", 512}, {"mixtral-tiny", 8}} {
		name := tt.name
		t.Run(name+"/budget="+strconv.Itoa(tt.budget), func(t *testing.T) {
			prompts := [][]int{{5, 6, 7}, {8, 9, 10}}
			const maxTokens = 100
			ref := loadModel(t, name)
			res, _, err := engine.Generate(context.Background(), ref, prompts, engine.GenerateOptions{MaxNewTokens: maxTokens, IgnoreEOS: true})
			if err != nil {
				t.Fatal(err)
			}
			info := ref.Info()
			worst := info.AdmitBytes(3, maxTokens)
			budget := worst * 3 / 2
			m := &cacheLog{Model: loadModel(t, name)}
			ts := newTestServer(t, name, m, func(c *Config) {
				c.KVCacheBytes, c.Preemption, c.MaxRunning, c.MaxBatchedTokens = budget, true, 2, tt.budget
			})
			c := ts.complete(t, map[string]any{"prompt": prompts, "max_tokens": maxTokens, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
			for i, ch := range c.Choices {
				if !slices.Equal(ch.TokenIDs, res[i].GeneratedIDs) {
					t.Errorf("prompt %d: %v, unconstrained %v", i, ch.TokenIDs, res[i].GeneratedIDs)
				}
			}
			// The newer, once: it comes back with its worst case reserved.
			if got := metricValue(t, ts.reg, "pregate_num_preemptions_total"); got != 1 {
				t.Errorf("%v preemptions, want 1", got)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			promptBytes := 2 * 3 * info.PromptBytesPerToken // both prompts', an encoder-decoder model's
			if peak := int64(m.peak)*info.CacheBytesPerToken + promptBytes; peak > budget || m.peak <= info.CacheTokens(3, maxTokens) {
				t.Errorf("the caches held %d tokens at most (%d bytes with the prompts), budget %d: want more than one sequence's worst case and within the budget", m.peak, peak, budget)
			}
			t.Logf("peak: %d cache tokens, %d bytes of %d", m.peak, int64(m.peak)*info.CacheBytesPerToken+promptBytes, budget)
		})
	}
}

// encodeLog is callLog for a model whose encoder runs in slices: it records each slice's tokens.
type encodeLog struct {
	callLog
	enc engine.Encoder
}

func (m *encodeLog) BeginEncode(prompts [][]int) (engine.EncodeJob, error) {
	j, err := m.enc.BeginEncode(prompts)
	if err != nil {
		return nil, err
	}
	return loggedJob{EncodeJob: j, log: &m.callLog}, nil
}

type loggedJob struct {
	engine.EncodeJob
	log *callLog
}

func (j loggedJob) Run(ctx context.Context, tokens int) (bool, error) {
	j.log.mu.Lock()
	j.log.calls = append(j.log.calls, "encode "+strconv.Itoa(tokens))
	j.log.mu.Unlock()
	return j.EncodeJob.Run(ctx, tokens)
}

// TestEncoderInSlices: an encoder-decoder model whose encoder runs in slices has its prompts'
// passes charged to the step's token budget after the decoding sequences' tokens, the fewest
// tokens left first: a short prompt is encoded whole and decodes before the long one's first slice
// and while its pass runs a slice between two decode steps; the tokens are those of one whole pass.
func TestEncoderInSlices(t *testing.T) {
	long, short := countingPrompt(40), []int{5, 6, 7}
	checkCallOrder(t, []callOrderCase{
		{"short beside long", [][]int{long, short}, 8, []string{"encode 3", "step 1", "encode 5", "step 1", "encode 7", "step 1", "encode 7",
			"step 1", "encode 7", "encode 8", "encode 6", "step 1"}},
		{"two long", [][]int{long, long}, 32, []string{"encode 32", "encode 32", "encode 8", "encode 8", "step 2"}},
		{"a long pass ends after a step", [][]int{long, short}, 32, []string{"encode 3", "step 1", "encode 29", "step 1", "encode 11", "step 2"}},
		{"both fit", [][]int{long, short}, 64, []string{"encode 3", "encode 40", "step 2"}},
		{"no budget", [][]int{long, short}, 0, []string{"start 40,3", "step 2"}},
	}, func(t *testing.T) (engine.Model, *callLog) {
		inner := loadModel(t, "switch-tiny")
		m := &encodeLog{callLog: callLog{Model: inner}, enc: inner.(engine.Encoder)}
		return m, &m.callLog
	})
}
