package serve

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/internal/golden"
	"github.com/pregate/pregate/internal/lifecycle"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func fixtureDir(name string) string { return filepath.Join("..", "..", "testdata", name) }

// goldenPrompts returns a fixture's unpadded prompts and HF's generated ids for them.
func goldenPrompts(t *testing.T, dir string) (prompts, want [][]int) {
	t.Helper()
	prompts, want, err := golden.Prompts(dir)
	if err != nil {
		t.Fatal(err)
	}
	return prompts, want
}

// loadModel loads a fixture's model (or the one in an absolute directory) on a 2-thread CPU, closed when the test ends.
func loadModel(t testing.TB, name string) engine.Model {
	t.Helper()
	dir := name
	if !filepath.IsAbs(dir) {
		dir = fixtureDir(name)
	}
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	cpu := compute.NewCPU(2)
	m, err := engine.Load(ckpt, cpu, engine.Options{})
	if err != nil {
		cpu.Close()
		ckpt.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		cpu.Close()
		ckpt.Close()
	})
	return m
}

type testServer struct {
	*Server
	url string
	reg *prometheus.Registry
}

// newTestServer serves m over real HTTP on 127.0.0.1, with its own registry; edit adjusts the
// config. Both are closed when the test ends, the server first so no request outlives it.
func newTestServer(t *testing.T, name string, m engine.Model, edit func(*Config)) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ModelName = name
	cfg.Model = m
	cfg.Registry = prometheus.NewRegistry()
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	t.Cleanup(func() { s.Close() })
	return &testServer{Server: s, url: hs.URL, reg: cfg.Registry}
}

// post sends body (JSON-encoded unless it is a string) and returns the response and its body.
func post(t *testing.T, ctx context.Context, url string, body any) (*http.Response, []byte) {
	t.Helper()
	resp, b, err := tryPost(ctx, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// tryPost is post for goroutines other than the test's.
func tryPost(ctx context.Context, url string, body any) (*http.Response, []byte, error) {
	req, err := newPost(ctx, url, body)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func newPost(ctx context.Context, url string, body any) (*http.Request, error) {
	b, ok := body.(string)
	if !ok {
		j, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		b = string(j)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", strings.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

// complete posts a non-streaming request that must succeed.
func (ts *testServer) complete(t *testing.T, body map[string]any) Completion {
	t.Helper()
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var c Completion
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return c
}

// streamed is what a stream carried: tokens and finish reason per choice, chunks, [DONE].
type streamed struct {
	tokens  map[int][]int
	texts   map[int]string
	finish  map[int]string
	errs    []Error
	chunks  int
	done    bool
	afterIt bool // something came after [DONE]
}

// readStream reads server-sent events to the end of the body.
func readStream(t *testing.T, r io.Reader) streamed {
	t.Helper()
	st, err := tryReadStream(r)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// tryReadStream is readStream for goroutines other than the test's.
func tryReadStream(r io.Reader) (streamed, error) {
	st := streamed{tokens: map[int][]int{}, texts: map[int]string{}, finish: map[int]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			return st, fmt.Errorf("not an SSE data line: %q", line)
		}
		if st.done {
			st.afterIt = true
		}
		if data == "[DONE]" {
			st.done = true
			continue
		}
		var ev struct {
			Completion
			Error *Error `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return st, fmt.Errorf("%w: %q", err, data)
		}
		if ev.Error != nil {
			st.errs = append(st.errs, *ev.Error)
			continue
		}
		st.chunks++
		if ev.Object != "text_completion" || !strings.HasPrefix(ev.ID, "cmpl-") {
			return st, fmt.Errorf("chunk %q", data)
		}
		for _, c := range ev.Choices {
			st.tokens[c.Index] = append(st.tokens[c.Index], c.TokenIDs...)
			st.texts[c.Index] += c.Text
			if c.FinishReason != nil {
				st.finish[c.Index] = *c.FinishReason
			}
		}
	}
	return st, sc.Err()
}

// metricValue is a gauge's or counter's value, or a histogram's count, summed over labels; with
// labels, only the series that have them.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

var fixtures = []string{"switch-tiny", "mixtral-tiny"}

// TestGolden checks greedy completions against the fixtures' golden ids and engine.Generate, over
// HTTP (one request with every prompt, streamed and not) and through Generate.
func TestGolden(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			prompts, want := goldenPrompts(t, fixtureDir(name))
			m := loadModel(t, name)
			res, _, err := engine.Generate(context.Background(), m, prompts, engine.GenerateOptions{MaxNewTokens: 10})
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if !slices.Equal(r.GeneratedIDs, want[i]) {
					t.Fatalf("engine.Generate prompt %d: %v, golden %v", i, r.GeneratedIDs, want[i])
				}
			}
			ts := newTestServer(t, name, m, nil)
			body := map[string]any{"model": name, "prompt": prompts, "max_tokens": 10, "temperature": 0, "return_token_ids": true}

			c := ts.complete(t, body)
			if c.Object != "text_completion" || c.Model != name || !strings.HasPrefix(c.ID, "cmpl-") || len(c.Choices) != len(prompts) {
				t.Fatalf("completion %+v", c)
			}
			promptTokens := 0
			for i, ch := range c.Choices {
				promptTokens += len(prompts[i])
				if ch.Index != i || !slices.Equal(ch.TokenIDs, want[i]) || !slices.Equal(ch.PromptTokenIDs, prompts[i]) ||
					ch.FinishReason == nil || *ch.FinishReason != "length" || ch.Text != "" {
					t.Errorf("choice %d = %+v, want token ids %v, finish length", i, ch, want[i])
				}
			}
			if u := c.Usage; u == nil || u.PromptTokens != promptTokens || u.CompletionTokens != 20 || u.TotalTokens != promptTokens+20 {
				t.Errorf("usage %+v, want %d prompt and 20 completion tokens", u, promptTokens)
			}

			body["stream"] = true
			body["stream_options"] = map[string]any{"include_usage": true}
			resp, b := post(t, context.Background(), ts.url, body)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("stream: status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			st := readStream(t, bytes.NewReader(b))
			if !st.done || st.afterIt || len(st.errs) > 0 {
				t.Fatalf("stream: done %v, data after [DONE] %v, errors %v", st.done, st.afterIt, st.errs)
			}
			if st.chunks != 20+2+1 { // a chunk per token, a finish chunk per choice, the usage
				t.Errorf("stream: %d chunks, want 23", st.chunks)
			}
			for i := range prompts {
				if !slices.Equal(st.tokens[i], want[i]) || st.finish[i] != "length" {
					t.Errorf("stream choice %d: tokens %v finish %q, want %v length", i, st.tokens[i], st.finish[i], want[i])
				}
			}

			for i, p := range prompts {
				var got []int
				finish, err := ts.Generate(context.Background(), Request{Prompt: p, MaxTokens: 10}, func(tok int) { got = append(got, tok) })
				if err != nil || finish != "length" || !slices.Equal(got, want[i]) {
					t.Errorf("Generate prompt %d: %v %q %v, want %v", i, got, finish, err, want[i])
				}
			}
			if got := metricValue(t, ts.reg, "pregate_generation_tokens_total"); got != 60 {
				t.Errorf("generated tokens metric %v, want 60", got)
			}
			if got := metricValue(t, ts.reg, "pregate_requests_total", "code", "200"); got != 2 {
				t.Errorf("requests_total{code=200} %v, want 2", got)
			}
		})
	}
}

// TestEOS: generation stops right after an EOS token (included, finish "stop") unless ignore_eos.
// A copy of switch-tiny whose EOS is 501, the second token the prompt below generates.
func TestEOS(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(fixtureDir("switch-tiny"), f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "config.json" {
			b = bytes.Replace(b, []byte(`"eos_token_id": 1,`), []byte(`"eos_token_id": 501,`), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ts := newTestServer(t, "switch-eos", loadModel(t, dir), nil)
	prompt := []int{335, 150, 293, 221, 369, 468, 288, 197, 334, 123, 40, 241}
	tests := []struct {
		ignoreEOS  bool
		want       []int
		wantFinish string
	}{
		{false, []int{208, 501}, "stop"},
		{true, []int{208, 501, 363}, "length"},
	}
	for _, tt := range tests {
		c := ts.complete(t, map[string]any{"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": tt.ignoreEOS, "return_token_ids": true})
		if ch := c.Choices[0]; !slices.Equal(ch.TokenIDs, tt.want) || *ch.FinishReason != tt.wantFinish {
			t.Errorf("ignore_eos %v: %v %q, want %v %q", tt.ignoreEOS, ch.TokenIDs, *ch.FinishReason, tt.want, tt.wantFinish)
		}
	}
}

// TestConcurrent runs 16 clients at once, half streaming: continuous batching must not change
// anyone's greedy output.
func TestConcurrent(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			prompts, want := goldenPrompts(t, fixtureDir(name))
			ts := newTestServer(t, name, loadModel(t, name), func(c *Config) { c.MaxRunning = 8 })
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Go(func() {
					i := g % len(prompts)
					body := map[string]any{"prompt": prompts[i], "max_tokens": 10, "temperature": 0, "return_token_ids": true, "stream": g%4 < 2}
					resp, b, err := tryPost(context.Background(), ts.url, body)
					if err != nil {
						t.Errorf("client %d: %v", g, err)
						return
					}
					if resp.StatusCode != http.StatusOK {
						t.Errorf("client %d: status %d: %s", g, resp.StatusCode, b)
						return
					}
					var got []int
					if g%4 < 2 {
						st, err := tryReadStream(bytes.NewReader(b))
						got = st.tokens[0]
						if err != nil || !st.done {
							t.Errorf("client %d: %v, [DONE] %v", g, err, st.done)
						}
					} else {
						var c Completion
						if err := json.Unmarshal(b, &c); err != nil {
							t.Error(err)
							return
						}
						got = c.Choices[0].TokenIDs
					}
					if !slices.Equal(got, want[i]) {
						t.Errorf("client %d prompt %d: %v, want %v", g, i, got, want[i])
					}
				})
			}
			wg.Wait()
			if got := metricValue(t, ts.reg, "pregate_time_to_first_token_seconds"); got != 16 {
				t.Errorf("time to first token observed %v times, want 16", got)
			}
			if got := metricValue(t, ts.reg, "pregate_inter_token_latency_seconds"); got != 16*9 {
				t.Errorf("inter-token latency observed %v times, want 144", got)
			}
		})
	}
}

// streamUntil starts a streaming request and returns once n chunks arrived; cancel ends it.
func streamUntil(t *testing.T, ts *testServer, body map[string]any, n int) (*http.Response, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := newPost(ctx, ts.url, body)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	r := bufio.NewReader(resp.Body)
	for seen := 0; seen < n; {
		line, err := r.ReadString('\n')
		if err != nil {
			resp.Body.Close()
			cancel()
			t.Fatalf("after %d events: %v", seen, err)
		}
		if strings.HasPrefix(line, "data: ") {
			seen++
		}
	}
	return resp, func() {
		cancel()
		resp.Body.Close()
	}
}

// TestClientCancel: a client that goes away stops its generation at the next step boundary.
func TestClientCancel(t *testing.T) {
	const maxTokens = 1 << 20
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) { c.MaxTokens = maxTokens })
	_, cancel := streamUntil(t, ts, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": maxTokens, "temperature": 0, "ignore_eos": true, "stream": true}, 3)
	cancel()
	eventually(t, "no running request", func() bool { return metricValue(t, ts.reg, "pregate_num_requests_running") == 0 })
	eventually(t, "the request counted as 499", func() bool {
		return metricValue(t, ts.reg, "pregate_requests_total", "code", "499") == 1
	})
	n := metricValue(t, ts.reg, "pregate_generation_tokens_total")
	t.Logf("%v tokens generated before the cancel took effect", n)
	time.Sleep(50 * time.Millisecond)
	if again := metricValue(t, ts.reg, "pregate_generation_tokens_total"); again != n || n >= maxTokens/100 {
		t.Fatalf("generated %v then %v tokens: generation did not stop", n, again)
	}
	// The server still serves.
	c := ts.complete(t, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2, "temperature": 0})
	if c.Usage.CompletionTokens != 2 {
		t.Fatalf("after a cancel: %+v", c)
	}
}

// TestOverloaded fills the one running place and the one waiting place: the next request is
// refused with 429 and Retry-After, and the waiting one runs once the place is free.
func TestOverloaded(t *testing.T) {
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) {
		c.MaxRunning, c.MaxWaiting = 1, 1
	})
	_, stopLong := streamUntil(t, ts, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 4096, "temperature": 0, "ignore_eos": true, "stream": true}, 1)
	defer stopLong()
	short := map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2, "temperature": 0}
	waited := make(chan int, 1)
	go func() {
		resp, _, err := tryPost(context.Background(), ts.url, short)
		if err != nil {
			waited <- 0
			return
		}
		waited <- resp.StatusCode
	}()
	eventually(t, "one waiting request", func() bool { return metricValue(t, ts.reg, "pregate_num_requests_waiting") == 1 })

	resp, b := post(t, context.Background(), ts.url, short)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	checkError(t, b, "rate_limit_error", "", "waiting")
	if _, err := ts.Generate(context.Background(), Request{Prompt: []int{1}, MaxTokens: 1}, nil); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("Generate: %v, want ErrOverloaded", err)
	}
	stopLong()
	if code := <-waited; code != http.StatusOK {
		t.Fatalf("the waiting request: status %d", code)
	}
}

// checkError checks an OpenAI error object.
func checkError(t *testing.T, body []byte, typ, param, msg string) {
	t.Helper()
	var e struct {
		Error *Error `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("not an error object (%v): %s", err, body)
	}
	var raw struct {
		Error map[string]any `json:"error"`
	}
	json.Unmarshal(body, &raw) //nolint:errcheck // decoded above
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw.Error[k]; !ok {
			t.Errorf("error object without %q: %s", k, body)
		}
	}
	if e.Error.Type != typ || !strings.Contains(e.Error.Message, msg) {
		t.Errorf("error %s: want type %q and a message with %q", body, typ, msg)
	}
	if (param == "") != (e.Error.Param == nil) || (param != "" && *e.Error.Param != param) {
		t.Errorf("error %s: want param %q", body, param)
	}
}

func TestBadRequests(t *testing.T) {
	ts := newTestServer(t, "mixtral-tiny", loadModel(t, "mixtral-tiny"), func(c *Config) { c.MaxModelLen = 256 })
	tests := []struct {
		name   string
		give   any
		status int
		param  string
		msg    string
	}{
		{"bad JSON", `{"prompt": [1, 2`, 400, "", "not valid JSON"},
		{"not an object", `[1, 2]`, 400, "", "not valid JSON"},
		{"missing prompt", map[string]any{"max_tokens": 3}, 400, "prompt", "prompt is required"},
		{"null prompt", map[string]any{"prompt": nil}, 400, "prompt", "prompt is required"},
		{"string prompt", map[string]any{"prompt": "hello"}, 400, "prompt", "token ids are required"},
		{"string list prompt", map[string]any{"prompt": []string{"a", "b"}}, 400, "prompt", "token ids are required"},
		{"empty prompt", map[string]any{"prompt": []int{}}, 400, "prompt", "prompt is empty"},
		{"empty inner prompt", map[string]any{"prompt": [][]int{{1}, {}}}, 400, "prompt", "prompt 1 is empty"},
		{"fractional id", `{"prompt": [1, 2.5]}`, 400, "prompt", "list of token ids"},
		{"id out of range", map[string]any{"prompt": []int{1, 512}}, 400, "prompt", "token id 512 at position 1 is out of range [0, 512)"},
		{"negative id", map[string]any{"prompt": [][]int{{1}, {-1}}}, 400, "prompt", "token id -1"},
		{"negative max_tokens", map[string]any{"prompt": []int{1}, "max_tokens": -1}, 400, "max_tokens", "at least 1"},
		{"zero max_tokens", map[string]any{"prompt": []int{1}, "max_tokens": 0}, 400, "max_tokens", "at least 1"},
		{"max_tokens over the limit", map[string]any{"prompt": []int{1}, "max_tokens": 5000}, 400, "max_tokens", "limit of 4096"},
		{"context too long", map[string]any{"prompt": []int{1, 2, 3}, "max_tokens": 254}, 400, "max_tokens", "maximum context length is 256"},
		{"max_tokens not a number", map[string]any{"prompt": []int{1}, "max_tokens": "many"}, 400, "max_tokens", "expected int"},
		{"negative temperature", map[string]any{"prompt": []int{1}, "temperature": -0.5}, 400, "temperature", "temperature is -0.5"},
		{"zero top_p", map[string]any{"prompt": []int{1}, "top_p": 0}, 400, "top_p", "0 < top_p ≤ 1"},
		{"top_p over 1", map[string]any{"prompt": []int{1}, "top_p": 1.5}, 400, "top_p", "0 < top_p ≤ 1"},
		{"zero n", map[string]any{"prompt": []int{1}, "n": 0}, 400, "n", "1 ≤ n ≤ 128"},
		{"n over 128", map[string]any{"prompt": []int{1}, "n": 129}, 400, "n", "1 ≤ n ≤ 128"},
		{"best_of", map[string]any{"prompt": []int{1}, "best_of": 3}, 400, "best_of", "not supported"},
		{"logprobs over 20", map[string]any{"prompt": []int{1}, "logprobs": 21}, 400, "logprobs", "0 ≤ logprobs ≤ 20"},
		{"negative logprobs", map[string]any{"prompt": []int{1}, "logprobs": -1}, 400, "logprobs", "0 ≤ logprobs ≤ 20"},
		{"stop without a tokenizer", map[string]any{"prompt": []int{1}, "stop": "\n"}, 400, "stop", "stop_token_ids work without"},
		{"five stop strings", map[string]any{"prompt": []int{1}, "stop": []string{"a", "b", "c", "d", "e"}}, 400, "stop", "5 stop strings, at most 4"},
		{"empty stop string", map[string]any{"prompt": []int{1}, "stop": []string{"a", ""}}, 400, "stop", "stop string 1 is empty"},
		{"stop not strings", map[string]any{"prompt": []int{1}, "stop": []int{1}}, 400, "stop", "a string or a list of strings"},
		{"stop token id out of range", map[string]any{"prompt": []int{1}, "stop_token_ids": []int{512}}, 400, "stop_token_ids", "out of range"},
		{"presence_penalty", map[string]any{"prompt": []int{1}, "presence_penalty": 2.5}, 400, "presence_penalty", "-2 ≤ presence_penalty ≤ 2"},
		{"frequency_penalty", map[string]any{"prompt": []int{1}, "frequency_penalty": -3}, 400, "frequency_penalty", "-2 ≤ frequency_penalty ≤ 2"},
		{"unknown field", map[string]any{"prompt": []int{1}, "frobnicate": 1}, 400, "frobnicate", "unrecognized request argument supplied: frobnicate"},
		{"suffix", map[string]any{"prompt": []int{1}, "suffix": "x"}, 400, "suffix", "unrecognized"},
		{"unknown stream option", map[string]any{"prompt": []int{1}, "stream_options": map[string]any{"continuous_usage_stats": true}}, 400, "continuous_usage_stats", "unrecognized"},
		{"data after the object", `{"prompt": [1]} {}`, 400, "", "data after the object"},
		{"other model", map[string]any{"prompt": []int{1}, "model": "gpt-4"}, 404, "", "`gpt-4` does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, context.Background(), ts.url, tt.give)
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d (%s), want %d: %s", resp.StatusCode, resp.Header.Get("Content-Type"), tt.status, b)
			}
			checkError(t, b, "invalid_request_error", tt.param, tt.msg)
		})
	}
	// Accepted as OpenAI does: user, defaults spelled out, an empty stop.
	c := ts.complete(t, map[string]any{"prompt": []int{1, 2}, "max_tokens": 2, "user": "x",
		"n": 1, "best_of": 1, "logprobs": nil, "echo": false, "stop": []string{}, "model": "", "temperature": 0})
	if c.Usage.CompletionTokens != 2 || c.Choices[0].TokenIDs != nil {
		t.Fatalf("completion %+v: want 2 tokens and no token_ids without return_token_ids", c)
	}
	if got := metricValue(t, ts.reg, "pregate_requests_total", "code", "400"); got != float64(len(tests)-1) {
		t.Errorf("requests_total{code=400} %v, want %d", got, len(tests)-1)
	}
	if _, err := ts.Generate(context.Background(), Request{Prompt: []int{1}}, nil); !errors.Is(err, ErrBadRequest) {
		t.Errorf("Generate without max tokens: %v, want ErrBadRequest", err)
	}
}

func TestBodyTooLarge(t *testing.T) {
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) { c.MaxBodyBytes = 1024 })
	big := `{"prompt": [1, 2, 3]` + strings.Repeat(" ", 2048) + `}`
	resp, b := post(t, context.Background(), ts.url, big)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413: %s", resp.StatusCode, b)
	}
	checkError(t, b, "invalid_request_error", "", "limit of 1024")

	// Without a Content-Length (chunked), the limit holds while reading.
	req, err := http.NewRequest(http.MethodPost, ts.url+"/v1/completions", io.MultiReader(strings.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || req.ContentLength != 0 {
		t.Fatalf("chunked: status %d (content length %d), want 413: %s", resp.StatusCode, req.ContentLength, b)
	}
	checkError(t, b, "invalid_request_error", "", "limit of 1024")
}

// TestStepError: a Step that fails (here: Mixtral past its 256 positions, with MaxModelLen unset
// so nothing stops the request before) fails its requests with a 500, or an error event in a
// stream; the server goes on serving.
func TestStepError(t *testing.T) {
	ts := newTestServer(t, "mixtral-tiny", loadModel(t, "mixtral-tiny"), nil)
	prompt := make([]int, 250)
	for i := range prompt {
		prompt[i] = 1 + i%500
	}
	body := map[string]any{"prompt": prompt, "max_tokens": 20, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	resp, b := post(t, context.Background(), ts.url, body)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500: %s", resp.StatusCode, b)
	}
	// The cause stays in the log; the client gets an id to quote (a server error's text may name
	// digests, stores and addresses).
	checkError(t, b, "server_error", "", "error id")
	if bytes.Contains(b, []byte("positions")) {
		t.Errorf("the 500's body carries the internal error: %s", b)
	}

	body["stream"] = true
	resp, b = post(t, context.Background(), ts.url, body)
	st := readStream(t, bytes.NewReader(b))
	if resp.StatusCode != http.StatusOK || len(st.errs) != 1 || st.errs[0].Type != "server_error" || !strings.Contains(st.errs[0].Message, "error id") ||
		!st.done || st.afterIt || len(st.tokens[0]) != 256-250+1 {
		t.Fatalf("stream: status %d, %d tokens, errors %+v, done %v", resp.StatusCode, len(st.tokens[0]), st.errs, st.done)
	}
	c := ts.complete(t, map[string]any{"prompt": []int{1, 2}, "max_tokens": 3, "temperature": 0})
	if c.Usage.CompletionTokens != 3 {
		t.Fatalf("after a failed step: %+v", c)
	}
	if got := metricValue(t, ts.reg, "pregate_requests_total", "code", "500"); got != 2 {
		t.Errorf("requests_total{code=500} %v, want 2", got)
	}
}

func TestProbes(t *testing.T) {
	var mu sync.Mutex
	readyErr := errors.New("placement not synced")
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) {
		c.Ready = func() error {
			mu.Lock()
			defer mu.Unlock()
			return readyErr
		}
	})
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(ts.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/health"); code != 200 {
		t.Errorf("/health: %d %q", code, body)
	}
	if code, body := get("/ready"); code != 503 || !strings.Contains(body, "placement not synced") {
		t.Errorf("/ready while not ready: %d %q", code, body)
	}
	mu.Lock()
	readyErr = nil
	mu.Unlock()
	if code, body := get("/ready"); code != 200 {
		t.Errorf("/ready when ready: %d %q", code, body)
	}

	code, body := get("/v1/models")
	var list modelList
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 || list.Object != "list" ||
		len(list.Data) != 1 || list.Data[0].ID != "switch-tiny" || list.Data[0].Object != "model" {
		t.Errorf("/v1/models: %d %s", code, body)
	}
	if code, _ := get("/v1/models/switch-tiny"); code != 200 {
		t.Errorf("/v1/models/switch-tiny: %d", code)
	}
	if code, body := get("/v1/models/other"); code != 404 || !strings.Contains(body, "model_not_found") {
		t.Errorf("/v1/models/other: %d %s", code, body)
	}

	ts.complete(t, map[string]any{"prompt": []int{5, 6}, "max_tokens": 3, "ignore_eos": true}) // sampled (temperature 1): EOS could end it early
	code, body = get("/metrics")
	for _, name := range []string{"pregate_num_requests_running", "pregate_num_requests_waiting", "pregate_time_to_first_token_seconds",
		"pregate_inter_token_latency_seconds", "pregate_e2e_request_latency_seconds", `pregate_requests_total{code="200"} 1`,
		"pregate_generation_tokens_total 3", "pregate_prompt_tokens_total 2"} {
		if code != 200 || !strings.Contains(body, name) {
			t.Errorf("/metrics (%d) lacks %q", code, name)
		}
	}

	ts.Close()
	if code, _ := get("/health"); code != 503 {
		t.Errorf("/health after Close: %d", code)
	}
	if code, _ := get("/ready"); code != 503 {
		t.Errorf("/ready after Close: %d", code)
	}
}

// TestSeed: a seed reproduces a sampled completion; another seed gives another one.
func TestSeed(t *testing.T) {
	ts := newTestServer(t, "mixtral-tiny", loadModel(t, "mixtral-tiny"), nil)
	sample := func(seed int64) []int {
		c := ts.complete(t, map[string]any{"prompt": []int{1, 95, 138}, "max_tokens": 12, "ignore_eos": true,
			"temperature": 1.5, "top_p": 0.95, "seed": seed, "return_token_ids": true})
		return c.Choices[0].TokenIDs
	}
	a, b, other := sample(7), sample(7), sample(8)
	if !slices.Equal(a, b) {
		t.Errorf("seed 7 gave %v then %v", a, b)
	}
	if slices.Equal(a, other) {
		t.Errorf("seeds 7 and 8 both gave %v", a)
	}
}

func TestSampler(t *testing.T) {
	seed := int64(1)
	logits := []float32{0, float32(math.Log(2)), float32(math.Log(3))} // probabilities 1/6, 2/6, 3/6
	tests := []struct {
		name string
		give Request
		want []float64 // frequencies
	}{
		{"greedy", Request{}, []float64{0, 0, 1}},
		{"temperature 1", Request{Temperature: 1}, []float64{1. / 6, 2. / 6, 3. / 6}},
		{"cold", Request{Temperature: 1e-3}, []float64{0, 0, 1}},
		{"top_p half", Request{Temperature: 1, TopP: 0.5}, []float64{0, 0, 1}},
		{"top_p 0.8", Request{Temperature: 1, TopP: 0.8}, []float64{0, 2. / 5, 3. / 5}},
	}
	const n = 30000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give.Seed = &seed
			s := newSampler(tt.give)
			var sc scratch
			counts := make([]float64, len(logits))
			for range n {
				counts[s.sample(logits, &sc)]++
			}
			for i := range counts {
				if got := counts[i] / n; math.Abs(got-tt.want[i]) > 0.01 {
					t.Errorf("token %d: frequency %.4f, want %.4f", i, got, tt.want[i])
				}
			}
		})
	}
}

// TestSamplerLongTail: a nucleus reaching into a long tail of unlikely tokens (below the first
// threshold the sampler tries) matches a plain sort of every token.
func TestSamplerLongTail(t *testing.T) {
	logits := make([]float32, 2001)
	for i := 1; i < len(logits); i++ {
		logits[i] = -10 + float32(i%7)*0.01
	}
	const topP = 0.99
	// Reference: sort all, keep the shortest prefix whose mass reaches top_p.
	p := make([]float64, len(logits))
	sum := 0.0
	for i, l := range logits {
		p[i] = math.Exp(float64(l))
		sum += p[i]
	}
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(p[b], p[a]) })
	inNucleus, mass := map[int]bool{}, 0.0
	for _, i := range order {
		inNucleus[i] = true
		if mass += p[i]; mass >= topP*sum {
			break
		}
	}
	if len(inNucleus) < 100 {
		t.Fatalf("the test's nucleus has %d tokens: it should reach far into the tail", len(inNucleus))
	}
	seed := int64(3)
	s := newSampler(Request{Temperature: 1, TopP: topP, Seed: &seed})
	var sc scratch
	const n = 3000
	first := 0
	for range n {
		tok := s.sample(logits, &sc)
		if !inNucleus[tok] {
			t.Fatalf("sampled %d, outside the nucleus", tok)
		}
		if tok == 0 {
			first++
		}
	}
	if got, want := float64(first)/n, p[0]/mass; math.Abs(got-want) > 0.02 {
		t.Errorf("token 0 sampled with frequency %.4f, want %.4f", got, want)
	}
}

// TestBatchContext: a batch's context ends when all its callers have gone, not before.
func TestBatchContext(t *testing.T) {
	s := &Server{g: lifecycle.NewGroup()}
	s.ctx = s.g.Context()
	defer s.g.Stop()
	ctxA, cancelA := context.WithCancel(context.Background())
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	batch := []*sequence{{call: &call{ctx: ctxA}}, {call: &call{ctx: ctxB}}, {call: &call{ctx: ctxB}}}
	ctx, release := s.batchContext(batch)
	defer release()
	cancelA()
	time.Sleep(10 * time.Millisecond)
	if ctx.Err() != nil {
		t.Fatal("cancelled while a caller remains")
	}
	cancelB()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not cancelled after every caller went")
	}

	ctx, release = s.batchContext([]*sequence{{call: &call{ctx: context.Background()}}})
	defer release()
	s.g.Stop()
	if ctx.Err() == nil {
		t.Fatal("not cancelled by Close")
	}
}

// TestClose fails running and waiting requests with ErrClosed and refuses new ones.
func TestClose(t *testing.T) {
	ts := newTestServer(t, "switch-tiny", loadModel(t, "switch-tiny"), func(c *Config) { c.MaxRunning = 1 })
	errs := make(chan error, 2)
	var emitted sync.WaitGroup
	emitted.Add(1)
	go func() {
		var once sync.Once
		_, err := ts.Generate(context.Background(), Request{Prompt: []int{5}, MaxTokens: 4096, IgnoreEOS: true}, func(int) { once.Do(emitted.Done) })
		errs <- err
	}()
	emitted.Wait()
	go func() {
		_, err := ts.Generate(context.Background(), Request{Prompt: []int{6}, MaxTokens: 1}, nil)
		errs <- err
	}()
	eventually(t, "one waiting request", func() bool { return metricValue(t, ts.reg, "pregate_num_requests_waiting") == 1 })
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Errorf("Generate during Close: %v, want ErrClosed", err)
		}
	}
	if _, err := ts.Generate(context.Background(), Request{Prompt: []int{5}, MaxTokens: 1}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate after Close: %v, want ErrClosed", err)
	}
	resp, b := post(t, context.Background(), ts.url, map[string]any{"prompt": []int{5}})
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Close: status %d: %s", resp.StatusCode, b)
	}
	if err := ts.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConfig(t *testing.T) {
	m := loadModel(t, "switch-tiny")
	valid := DefaultConfig()
	valid.ModelName, valid.Model = "m", m
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no name", func(c *Config) { c.ModelName = "" }},
		{"no model", func(c *Config) { c.Model = nil }},
		{"max running", func(c *Config) { c.MaxRunning = 0 }},
		{"max waiting", func(c *Config) { c.MaxWaiting = 0 }},
		{"body", func(c *Config) { c.MaxBodyBytes = 0 }},
		{"tokens", func(c *Config) { c.MaxTokens = 0 }},
		{"model len", func(c *Config) { c.MaxModelLen = -1 }},
		{"preemption without a budget", func(c *Config) { c.Preemption = true }},
	}
	for _, tt := range tests {
		cfg := valid
		tt.edit(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: valid", tt.name)
		}
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", tt.name)
		}
	}
	// Two servers cannot share a registry's names; closing the first frees them.
	valid.Registry = prometheus.NewRegistry()
	s, err := New(valid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(valid); err == nil {
		t.Error("second server on one registry")
	}
	s.Close()
	s, err = New(valid)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	s.Close()
}

// panickyModel is a real model whose Step panics, as a bug in the engine would.
type panickyModel struct{ engine.Model }

func (panickyModel) Step(context.Context, []*engine.Sequence, bool) ([][]float32, error) {
	panic("index out of range in a kernel")
}

// TestModelPanicFailsTheServer: a panic in the model fails the request in flight and the server
// (Err, Failed), instead of crashing the process mid-response.
func TestModelPanicFailsTheServer(t *testing.T) {
	s := newTestServer(t, "m", panickyModel{loadModel(t, "switch-tiny")}, nil)
	_, err := s.Generate(context.Background(), Request{Prompt: []int{5, 6, 7}, MaxTokens: 3}, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Generate = %v, want ErrClosed", err)
	}
	select {
	case <-s.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("Failed not closed")
	}
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "scheduler: model panicked: index out of range") {
		t.Fatalf("Err() = %v", err)
	}
	if _, err := s.Generate(context.Background(), Request{Prompt: []int{5}, MaxTokens: 1}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Generate after the failure = %v, want ErrClosed", err)
	}
}

// TestServeUntilCancelled: Serve returns nil once its context ends, and the server is closed.
func TestServeUntilCancelled(t *testing.T) {
	s := newTestServer(t, "m", loadModel(t, "switch-tiny"), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	if _, err := s.Generate(context.Background(), Request{Prompt: []int{5, 6}, MaxTokens: 2, IgnoreEOS: true}, nil); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil || s.Err() != nil {
		t.Fatalf("Serve = %v, Err = %v after a normal stop", err, s.Err())
	}
	if _, err := s.Generate(context.Background(), Request{Prompt: []int{5}, MaxTokens: 1}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Generate after Serve returned = %v, want ErrClosed", err)
	}
}

// continuation is the text generated ids add to the prompt's: a leading space stays, as in vLLM.
func continuation(tok *tokenizer.Tokenizer, prompt, generated []int) string {
	whole := tok.Decode(append(slices.Clone(prompt), generated...), true)
	text, ok := strings.CutPrefix(whole, tok.Decode(prompt, true))
	if !ok {
		panic(fmt.Sprintf("%q does not continue the prompt's text", whole))
	}
	return text
}

// TestTextPrompts: with a tokenizer, prompts may be text (encoded as the tokenizer does, BOS
// included) and completions carry text, whole or streamed, that continues the prompt's.
func TestTextPrompts(t *testing.T) {
	ts, tok := textServer(t)
	prompts := []string{"Hello world", "naïve café, 日本"}
	c := ts.complete(t, map[string]any{"prompt": prompts, "max_tokens": 6, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
	if len(c.Choices) != 2 {
		t.Fatalf("choices %+v", c.Choices)
	}
	for i, ch := range c.Choices {
		want, _ := tok.Encode(prompts[i], true)
		if !slices.Equal(ch.PromptTokenIDs, want) || want[0] != tok.BOS() {
			t.Errorf("prompt %d ids %v, want %v", i, ch.PromptTokenIDs, want)
		}
		if len(ch.TokenIDs) != 6 || ch.Text != continuation(tok, want, ch.TokenIDs) {
			t.Errorf("choice %d: text %q for ids %v, want %q", i, ch.Text, ch.TokenIDs, continuation(tok, want, ch.TokenIDs))
		}
	}
	one := ts.complete(t, map[string]any{"prompt": prompts[0], "max_tokens": 6, "temperature": 0, "ignore_eos": true})
	if one.Choices[0].Text != c.Choices[0].Text {
		t.Errorf("a string prompt gave %q, the same in a list %q", one.Choices[0].Text, c.Choices[0].Text)
	}
	resp, body := post(t, context.Background(), ts.url, map[string]any{"prompt": prompts, "max_tokens": 6, "temperature": 0,
		"ignore_eos": true, "stream": true, "return_token_ids": true})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", body)
	}
	st := readStream(t, bytes.NewReader(body))
	for i := range prompts {
		if !slices.Equal(st.tokens[i], c.Choices[i].TokenIDs) || st.texts[i] != c.Choices[i].Text {
			t.Errorf("streamed choice %d: %v %q, want %v %q", i, st.tokens[i], st.texts[i], c.Choices[i].TokenIDs, c.Choices[i].Text)
		}
	}
}
