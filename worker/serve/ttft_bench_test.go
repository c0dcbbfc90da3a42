package serve

import (
	"context"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pregate/pregate/engine"
)

// BenchmarkShortBesideLong is issue 15's case: a 3-token request sent while a 1,500-token prompt is
// being prefilled. It reports the short request's TTFT, the long one's, and a lone decode step's
// time, for whole-prompt prefill (budget 0) and chunked prefill. PREGATE_BENCH_MIXTRAL names a
// Mixtral checkpoint directory (absolute; e.g. pregate synth --arch mixtral --preset
// mixtral-bench --layers 4 --dtype bf16); without it the benchmark is skipped.
func BenchmarkShortBesideLong(b *testing.B) {
	m, long := longPromptBench(b, "PREGATE_BENCH_MIXTRAL")
	short := []int{5, 6, 7}
	for _, budget := range []int{0, 512, 128, 32} {
		b.Run("budget="+strconv.Itoa(budget), func(b *testing.B) {
			started := &firstStep{Model: m, ch: make(chan struct{})}
			cfg := DefaultConfig()
			cfg.ModelName, cfg.Model, cfg.Registry = "bench", started, prometheus.NewRegistry()
			cfg.MaxRunning, cfg.MaxBatchedTokens = 8, budget
			s, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			step := decodeStep(b, s, short)
			var shortTTFT, longTTFT time.Duration
			for range b.N {
				started.arm()
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					longTTFT = ttft(b, s, long, 1)
				}()
				<-started.ch // the long prompt's first Step is running
				shortTTFT = ttft(b, s, short, 1)
				wg.Wait()
			}
			b.ReportMetric(float64(shortTTFT.Milliseconds()), "short-ttft-ms")
			b.ReportMetric(float64(longTTFT.Milliseconds()), "long-ttft-ms")
			b.ReportMetric(float64(step.Microseconds())/1000, "decode-step-ms")
		})
	}
}

// longPromptBench loads the checkpoint the environment variable env names (the benchmark is
// skipped without it) and makes a 1,500-token prompt of its vocabulary.
func longPromptBench(b *testing.B, env string) (engine.Model, []int) {
	dir := os.Getenv(env)
	if dir == "" {
		b.Skip(env + " is not set")
	}
	m := loadModel(b, dir)
	vocab := m.Info().VocabSize
	long := make([]int, 1500)
	for i := range long {
		long[i] = 1 + (i*7919)%(vocab-1)
	}
	return m, long
}

// firstStep signals ch at the first Step after arm.
type firstStep struct {
	engine.Model
	mu    sync.Mutex
	ch    chan struct{}
	armed bool
}

func (m *firstStep) arm() {
	m.mu.Lock()
	m.ch, m.armed = make(chan struct{}), true
	m.mu.Unlock()
}

func (m *firstStep) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	m.mu.Lock()
	if m.armed {
		close(m.ch)
		m.armed = false
	}
	m.mu.Unlock()
	return m.Model.Step(ctx, seqs, all)
}

// ttft is the time from submitting prompt until its first token.
func ttft(b *testing.B, s *Server, prompt []int, maxTokens int) time.Duration {
	t0 := time.Now()
	var first time.Duration
	_, err := s.Generate(context.Background(), Request{Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: true}, func(int) {
		if first == 0 {
			first = time.Since(t0)
		}
	})
	if err != nil {
		b.Error(err)
	}
	return first
}

// decodeStep is the mean time of a decode step of prompt alone.
func decodeStep(b *testing.B, s *Server, prompt []int) time.Duration {
	const n = 9
	var times []time.Time
	if _, err := s.Generate(context.Background(), Request{Prompt: prompt, MaxTokens: n, IgnoreEOS: true}, func(int) {
		times = append(times, time.Now())
	}); err != nil {
		b.Fatal(err)
	}
	return times[len(times)-1].Sub(times[0]) / time.Duration(len(times)-1)
}

// BenchmarkSwitchShortBesideLong is issue 15's Switch case: a request decoding, a 1,500-token
// prompt that arrives during one of its decode steps, and a 3-token request that arrives with it
// (the same step) or 0.3 s later, while the long prompt's encoder pass runs (all max_tokens 1 but
// the running one). Each round runs the cases on four servers, alternately: "whole", whose model
// runs an encoder pass whole in Start (the prompts admitted together start the fewest tokens first
// within the budget of 512: the scheduler before the encoder ran in slices); and "sliced" with
// budgets 512, 64 and 8, whose model's passes run in slices charged to the budget
// (engine.EncodeJob). It reports the medians of the short request's TTFT (in ms, and in the
// running request's mean decode steps before the long prompt arrived), the long one's TTFT,
// and the running request's longest gap between two tokens after the long prompt arrived.
// PREGATE_BENCH_SWITCH names a Switch checkpoint directory (absolute; e.g. the demo's: pregate
// synth --arch switch --preset switch-tiny --layers 8 --experts 8 --d-model 256 --d-ff 512 --vocab
// 1024 --pre-gates); without it the benchmark is skipped.
func BenchmarkSwitchShortBesideLong(b *testing.B) {
	_, long := longPromptBench(b, "PREGATE_BENCH_SWITCH")
	servers := []struct {
		name   string
		budget int
		sliced bool
	}{{"whole", 512, false}, {"sliced512", 512, true}, {"sliced64", 64, true}, {"sliced8", 8, true}}
	delays := []time.Duration{0, 300 * time.Millisecond}
	type server struct {
		s    *Server
		gate *gatedStep
	}
	built := make([]server, len(servers))
	for i, sv := range servers {
		// A model of its own (a CPU of its own): another server's scheduler may still be finishing
		// the Step of a request the benchmark cancelled.
		m := loadModel(b, os.Getenv("PREGATE_BENCH_SWITCH"))
		gate := &gatedStep{Model: m}
		var model engine.Model = gate
		if sv.sliced {
			model = gatedEncoder{gatedStep: gate, enc: m.(engine.Encoder)}
		}
		cfg := DefaultConfig()
		cfg.ModelName, cfg.Model, cfg.Registry = "bench", model, prometheus.NewRegistry()
		cfg.MaxRunning, cfg.MaxBatchedTokens = 8, sv.budget
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		built[i] = server{s, gate}
	}
	// results[server][delay]: the short request's TTFT, the same in decode steps (×1000), the long
	// one's TTFT, the running request's longest gap.
	results := make([][][4][]time.Duration, len(servers))
	for i := range results {
		results[i] = make([][4][]time.Duration, len(delays))
	}
	for range b.N {
		for di, delay := range delays {
			for i, sv := range built {
				r := besideRunning(b, sv.s, sv.gate, long, delay)
				res := &results[i][di]
				res[0] = append(res[0], r.short)
				res[1] = append(res[1], time.Duration(1000*float64(r.short)/float64(r.step)))
				res[2], res[3] = append(res[2], r.long), append(res[3], r.gap)
			}
		}
	}
	for i, sv := range servers {
		for di, delay := range delays {
			res := results[i][di]
			name := sv.name + "-together-"
			if delay > 0 {
				name = sv.name + "-later-"
			}
			b.ReportMetric(float64(median(res[0]).Microseconds())/1000, name+"short-ttft-ms")
			b.ReportMetric(float64(median(res[1]))/1000, name+"short-ttft-steps")
			b.ReportMetric(float64(median(res[2]).Microseconds())/1000, name+"long-ttft-ms")
			b.ReportMetric(float64(median(res[3]).Microseconds())/1000, name+"running-gap-ms")
			b.Logf("%s, the short request %v after the long: short TTFT %v (%v steps×1000), long TTFT %v, running gap %v",
				sv.name, delay, res[0], res[1], res[2], res[3])
		}
	}
}

// gatedEncoder is gatedStep for a model whose encoder runs in slices.
type gatedEncoder struct {
	*gatedStep
	enc engine.Encoder
}

func (m gatedEncoder) BeginEncode(prompts [][]int) (engine.EncodeJob, error) {
	return m.enc.BeginEncode(prompts)
}

// besideCase is what besideRunning measured: the short and the long request's TTFT, the running
// request's longest gap between two tokens after the long one was queued, and its mean decode
// step before.
type besideCase struct {
	short, long, gap, step time.Duration
}

// besideRunning holds a running request's decode step until the long request is queued (and the
// short one, when delay is 0), then lets it go; delay later it sends the short one. It times them.
func besideRunning(b *testing.B, s *Server, gate *gatedStep, long []int, delay time.Duration) besideCase {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var times []time.Time
	first := make(chan struct{})
	bg := make(chan struct{})
	go func() {
		defer close(bg)
		_, err := s.Generate(ctx, Request{Prompt: []int{9, 10, 11}, MaxTokens: 4000, IgnoreEOS: true}, func(int) {
			mu.Lock()
			if times = append(times, time.Now()); len(times) == 10 {
				close(first)
			}
			mu.Unlock()
		})
		if ctx.Err() == nil {
			b.Errorf("the running request: %v (the server: %v)", err, s.Err()) // before it was cancelled
		}
	}()
	select {
	case <-first: // ten tokens: nine decode steps to measure
	case <-bg:
		b.FailNow()
	}
	entered, release := gate.hold()
	<-entered // the running request's Step waits while the long one (and the short one) is queued
	var r besideCase
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.long = ttft(b, s, long, 1) }()
	shortReq := func() { defer wg.Done(); r.short = ttft(b, s, []int{5, 6, 7}, 1) }
	queued := 1
	if delay == 0 {
		go shortReq()
		queued = 2
	}
	for s.queued() < queued {
		time.Sleep(100 * time.Microsecond)
	}
	since := time.Now()
	close(release)
	if delay > 0 {
		time.Sleep(delay)
		go shortReq()
	}
	wg.Wait()
	// The running request's callbacks trail the others': wait for one of its tokens from after
	// now, so that the one that ended its gap is in.
	for done := time.Now(); ; time.Sleep(100 * time.Microsecond) {
		mu.Lock()
		last := times[len(times)-1]
		mu.Unlock()
		if last.After(done) {
			break
		}
	}
	mu.Lock()
	before := 0 // tokens before the long prompt arrived
	for i := 1; i < len(times); i++ {
		if !times[i].After(since) {
			before = i
			continue
		}
		prev := times[i-1]
		if prev.Before(since) {
			prev = since // not the time the benchmark held the step
		}
		r.gap = max(r.gap, times[i].Sub(prev))
	}
	// The mean decode step before (callbacks can come in bursts, so not the median of the gaps).
	r.step = times[before].Sub(times[0]) / time.Duration(before)
	mu.Unlock()
	cancel()
	<-bg
	return r
}

// queued is the number of sequences waiting to be admitted.
func (s *Server) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiting)
}

// gatedStep holds the first Step after hold: it closes entered when that Step begins, and runs it
// once release is closed.
type gatedStep struct {
	engine.Model
	mu               sync.Mutex
	entered, release chan struct{}
}

func (m *gatedStep) hold() (entered, release chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entered, m.release = make(chan struct{}), make(chan struct{})
	return m.entered, m.release
}

func (m *gatedStep) Step(ctx context.Context, seqs []*engine.Sequence, all bool) ([][]float32, error) {
	m.mu.Lock()
	entered, release := m.entered, m.release
	m.entered, m.release = nil, nil
	m.mu.Unlock()
	if entered != nil {
		close(entered)
		<-release
	}
	return m.Model.Step(ctx, seqs, all)
}

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}
