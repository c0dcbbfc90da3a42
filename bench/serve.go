package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// ServeOptions describe a serving benchmark: a request mix replayed against a worker's OpenAI API,
// as vLLM's serving benchmark does (streamed completions, ignore_eos so that every request
// generates MaxTokens, random prompts of PromptLen token ids).
type ServeOptions struct {
	URL, Model, APIKey string
	// Concurrency is how many requests are in flight at most.
	Concurrency int
	// Rate is how many requests start per second (Poisson arrivals); 0 starts the next one as soon
	// as a slot is free.
	Rate      float64
	Requests  int
	PromptLen int
	MaxTokens int
	// Vocab bounds the prompts' token ids, [1, Vocab).
	Vocab int
	Seed  uint64
	// Client sends the requests (nil: a client with no timeout of its own).
	Client *http.Client
}

// Percentiles are a latency distribution's p50 and p99, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
}

// ServeResult is one run of RunServe.
type ServeResult struct {
	Concurrency           int         `json:"concurrency"`
	Rate                  float64     `json:"rate,omitempty"`
	Requests              int         `json:"requests"`
	Failed                int         `json:"failed"`
	Seconds               float64     `json:"seconds"`
	RequestsPerSecond     float64     `json:"requests_per_second"`
	OutputTokens          int         `json:"output_tokens"`
	OutputTokensPerSecond float64     `json:"output_tokens_per_second"`
	TTFT                  Percentiles `json:"ttft"`
	ITL                   Percentiles `json:"itl"`
	E2E                   Percentiles `json:"e2e"`
	Errors                []string    `json:"errors,omitempty"` // the first few
}

// serveSample is what one request measured.
type serveSample struct {
	ttft, e2e time.Duration
	itl       []time.Duration
	tokens    int
	err       error
}

// RunServe replays o.Requests requests and reports throughput and latencies. A request that fails
// (HTTP error, an error event, fewer tokens than asked) counts in Failed, not in the latencies.
func RunServe(ctx context.Context, o ServeOptions) (ServeResult, error) {
	if o.Concurrency < 1 || o.Requests < 1 || o.PromptLen < 1 || o.MaxTokens < 1 || o.Vocab < 2 || o.Rate < 0 {
		return ServeResult{}, fmt.Errorf("bench: serve: concurrency %d, requests %d, prompt length %d, max tokens %d, vocab %d, rate %g: want positive",
			o.Concurrency, o.Requests, o.PromptLen, o.MaxTokens, o.Vocab, o.Rate)
	}
	client := o.Client
	if client == nil {
		client = &http.Client{}
	}
	rng := rand.New(rand.NewPCG(o.Seed, 1))
	prompts := make([][]int, o.Requests)
	for i := range prompts {
		prompts[i] = make([]int, o.PromptLen)
		for j := range prompts[i] {
			prompts[i][j] = 1 + rng.IntN(o.Vocab-1)
		}
	}
	samples := make([]serveSample, o.Requests)
	slots := make(chan struct{}, o.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	next := start
	for i := range o.Requests {
		if o.Rate > 0 { // Poisson arrivals: exponential gaps
			next = next.Add(time.Duration(rng.ExpFloat64() / o.Rate * float64(time.Second)))
			select {
			case <-ctx.Done():
				return ServeResult{}, ctx.Err()
			case <-time.After(time.Until(next)):
			}
		}
		select {
		case <-ctx.Done():
			return ServeResult{}, ctx.Err()
		case slots <- struct{}{}:
		}
		wg.Go(func() {
			defer func() { <-slots }()
			samples[i] = streamOne(ctx, client, o, prompts[i])
		})
	}
	wg.Wait()
	return summarizeServe(o, samples, time.Since(start)), nil
}

// streamOne sends one streamed completion and times its tokens.
func streamOne(ctx context.Context, client *http.Client, o ServeOptions, prompt []int) serveSample {
	body, _ := json.Marshal(map[string]any{"model": o.Model, "prompt": prompt, "max_tokens": o.MaxTokens,
		"stream": true, "ignore_eos": true, "temperature": 0, "return_token_ids": true})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(o.URL, "/")+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return serveSample{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	if o.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.APIKey)
	}
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return serveSample{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return serveSample{err: fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))}
	}
	var s serveSample
	last := sent
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ev struct {
			Choices []struct {
				TokenIDs []int `json:"token_ids"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return serveSample{err: fmt.Errorf("a bad event: %w", err)}
		}
		if ev.Error != nil {
			return serveSample{err: errors.New(ev.Error.Message)}
		}
		n := 0
		for _, c := range ev.Choices {
			n += len(c.TokenIDs)
		}
		if n == 0 {
			continue
		}
		now := time.Now()
		if s.tokens == 0 {
			s.ttft = now.Sub(sent)
		} else {
			s.itl = append(s.itl, now.Sub(last))
		}
		s.tokens += n
		last = now
	}
	if err := sc.Err(); err != nil {
		return serveSample{err: err}
	}
	s.e2e = time.Since(sent)
	if s.tokens < o.MaxTokens {
		return serveSample{err: fmt.Errorf("%d of %d tokens", s.tokens, o.MaxTokens)}
	}
	return s
}

func summarizeServe(o ServeOptions, samples []serveSample, took time.Duration) ServeResult {
	r := ServeResult{Concurrency: o.Concurrency, Rate: o.Rate, Requests: len(samples), Seconds: took.Seconds()}
	var ttft, itl, e2e []time.Duration
	for _, s := range samples {
		if s.err != nil {
			r.Failed++
			if len(r.Errors) < 5 {
				r.Errors = append(r.Errors, s.err.Error())
			}
			continue
		}
		r.OutputTokens += s.tokens
		ttft, e2e, itl = append(ttft, s.ttft), append(e2e, s.e2e), append(itl, s.itl...)
	}
	r.RequestsPerSecond = float64(r.Requests-r.Failed) / took.Seconds()
	r.OutputTokensPerSecond = float64(r.OutputTokens) / took.Seconds()
	r.TTFT, r.ITL, r.E2E = percentiles(ttft), percentiles(itl), percentiles(e2e)
	return r
}

// percentiles are ds's p50 and p99 (nearest rank), zero for none.
func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	slices.Sort(ms)
	return Percentiles{P50: quantile(ms, 0.50), P99: quantile(ms, 0.99)}
}
