package serve

import (
	"context"
	"os"
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
	dir := os.Getenv("PREGATE_BENCH_MIXTRAL")
	if dir == "" {
		b.Skip("PREGATE_BENCH_MIXTRAL is not set")
	}
	m := loadModel(b, dir)
	vocab := m.Info().VocabSize
	long := make([]int, 1500)
	for i := range long {
		long[i] = 1 + (i*7919)%(vocab-1)
	}
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
