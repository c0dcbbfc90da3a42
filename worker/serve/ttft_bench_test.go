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

// BenchmarkSwitchShortBesideLong is issue 15's Switch case: a 1,500-token prompt and a 3-token
// request that arrive during the same decode step of a running request (all max_tokens 1 but the
// running one). Each round runs it on a server that starts every admitted prompt in one Start
// (budget 0: the encoder pass of both at once, as before) and on one that starts the fewest prompt
// tokens first within the budget (512), alternately, and reports the medians of the short
// request's TTFT, the long one's, and the running request's longest gap between two tokens while
// they start. PREGATE_BENCH_SWITCH names a Switch checkpoint directory (absolute; e.g. the demo's:
// pregate synth --arch switch --preset switch-tiny --layers 8 --experts 8 --d-model 256 --d-ff 512
// --vocab 1024 --pre-gates); without it the benchmark is skipped.
func BenchmarkSwitchShortBesideLong(b *testing.B) {
	m, long := longPromptBench(b, "PREGATE_BENCH_SWITCH")
	budgets := []int{0, 512}
	servers := make([]*Server, len(budgets))
	gates := make([]*gatedStep, len(budgets))
	for i, budget := range budgets {
		if i > 0 {
			// A model of its own (a CPU of its own): the other server's scheduler may still be
			// finishing the Step of a request the benchmark cancelled.
			m = loadModel(b, os.Getenv("PREGATE_BENCH_SWITCH"))
		}
		gates[i] = &gatedStep{Model: m}
		cfg := DefaultConfig()
		cfg.ModelName, cfg.Model, cfg.Registry = "bench", gates[i], prometheus.NewRegistry()
		cfg.MaxRunning, cfg.MaxBatchedTokens = 8, budget
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		servers[i] = s
	}
	results := make([][3][]time.Duration, len(budgets)) // short TTFT, long TTFT, the running one's gap
	for range b.N {
		for i, s := range servers {
			shortTTFT, longTTFT, gap := besideRunning(b, s, gates[i], long)
			r := &results[i]
			r[0], r[1], r[2] = append(r[0], shortTTFT), append(r[1], longTTFT), append(r[2], gap)
		}
	}
	for i, budget := range budgets {
		for j, name := range []string{"short-ttft-ms", "long-ttft-ms", "running-gap-ms"} {
			b.ReportMetric(float64(median(results[i][j]).Microseconds())/1000, "budget"+strconv.Itoa(budget)+"-"+name)
		}
		b.Logf("budget %d: short TTFT %v, long TTFT %v, running gap %v", budget, results[i][0], results[i][1], results[i][2])
	}
}

// besideRunning holds a running request's decode step until the long and the short request are
// both queued, then times them.
func besideRunning(b *testing.B, s *Server, gate *gatedStep, long []int) (short, longTTFT, gap time.Duration) {
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
			if times = append(times, time.Now()); len(times) == 1 {
				close(first)
			}
			mu.Unlock()
		})
		if ctx.Err() == nil {
			b.Errorf("the running request: %v (the server: %v)", err, s.Err()) // before it was cancelled
		}
	}()
	select {
	case <-first:
	case <-bg:
		b.FailNow()
	}
	entered, release := gate.hold()
	<-entered // the running request's Step waits while the two are queued
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); longTTFT = ttft(b, s, long, 1) }()
	go func() { defer wg.Done(); short = ttft(b, s, []int{5, 6, 7}, 1) }()
	for s.queued() < 2 {
		time.Sleep(100 * time.Microsecond)
	}
	since := time.Now()
	close(release)
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
	for i := 1; i < len(times); i++ {
		if times[i].After(since) {
			prev := times[i-1]
			if prev.Before(since) {
				prev = since // not the time the benchmark held the step
			}
			gap = max(gap, times[i].Sub(prev))
		}
	}
	mu.Unlock()
	cancel()
	<-bg
	return short, longTTFT, gap
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
