package serve

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	running, waiting prometheus.Gauge
	kvReserved       prometheus.Gauge
	ttft, itl        prometheus.Histogram
	duration         prometheus.Histogram
	requests         *prometheus.CounterVec
	generatedTokens  prometheus.Counter
	promptTokens     prometheus.Counter
}

// newMetrics registers the server's metrics on reg; on an error it registers none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_requests_running",
			Help: "Sequences being decoded (one per prompt)."}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_requests_waiting",
			Help: "Sequences queued for a place among the running ones."}),
		kvReserved: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_kv_cache_reserved_bytes",
			Help: "KV-cache bytes the running sequences reserve (each at its longest: prompt plus max_tokens); with --kv-cache-bytes, at most that."}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pregate_time_to_first_token_seconds",
			Help:    "Time from a sequence's submission to its first token.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}}),
		itl: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pregate_inter_token_latency_seconds",
			Help:    "Time between two consecutive tokens of a sequence.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10}}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pregate_request_duration_seconds",
			Help:    "Time from a sequence's submission to its last token, for sequences that finished.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 18)}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pregate_requests_total",
			Help: "Completion requests by HTTP status code (499: the client went away)."}, []string{"code"}),
		generatedTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_generated_tokens_total",
			Help: "Tokens generated."}),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_prompt_tokens_total",
			Help: "Prompt tokens of the sequences started."}),
	}
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return nil, fmt.Errorf("serve: metrics: %w", err)
		}
		done = append(done, c)
	}
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.running, m.waiting, m.kvReserved, m.ttft, m.itl, m.duration, m.requests,
		m.generatedTokens, m.promptTokens}
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
