package serve

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's, named as vLLM names its own with the prefix vllm: → pregate_ where
// vLLM has one (docs/ARCHITECTURE.md has the table), so dashboards and alerts written for vLLM
// read them with the prefix changed. The per-request ones are per sequence (one per choice).
type metrics struct {
	running, waiting prometheus.Gauge
	kvReserved       prometheus.Gauge
	kvUsage          prometheus.Gauge
	queueTime        prometheus.Histogram
	prefillTime      prometheus.Histogram
	decodeTime       prometheus.Histogram
	ttft, itl        prometheus.Histogram
	e2e              prometheus.Histogram
	requests         *prometheus.CounterVec
	success          *prometheus.CounterVec
	generationTokens prometheus.Counter
	promptTokens     prometheus.Counter
	preemptions      prometheus.Counter
}

// requestBuckets are vLLM's buckets for its per-request latencies (queue, prefill, decode, e2e).
var requestBuckets = []float64{0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680}

// newMetrics registers the server's metrics on reg; on an error it registers none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	short := append([]float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25}, requestBuckets...)
	m := &metrics{
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_num_requests_running",
			Help: "Sequences being prefilled or decoded (one per choice)."}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_num_requests_waiting",
			Help: "Sequences queued for a place among the running ones."}),
		kvReserved: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_kv_cache_reserved_bytes",
			Help: "KV-cache bytes the running sequences reserve (each at its longest: prompt plus max_tokens); with --kv-cache-bytes, at most that."}),
		kvUsage: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pregate_kv_cache_usage_perc",
			Help: "The running sequences' KV-cache reservations as a fraction of --kv-cache-bytes, 0 to 1 (1 = full); 0 without a budget."}),
		queueTime: histogram("pregate_request_queue_time_seconds",
			"Time a sequence waited in the queue: from its submission to its admission.", short),
		prefillTime: histogram("pregate_request_prefill_time_seconds",
			"Time from a sequence's admission to its first token (its prompt's prefill).", short),
		decodeTime: histogram("pregate_request_decode_time_seconds",
			"Time from a sequence's first token to its last, for sequences that finished.", short),
		ttft: histogram("pregate_time_to_first_token_seconds",
			"Time from a sequence's submission to its first token.",
			[]float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
		itl: histogram("pregate_inter_token_latency_seconds",
			"Time between two consecutive tokens of a sequence.",
			[]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10}),
		e2e: histogram("pregate_e2e_request_latency_seconds",
			"Time from a sequence's submission to its last token, for sequences that finished.", short),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pregate_requests_total",
			Help: "Completion requests by HTTP status code (499: the client went away)."}, []string{"code"}),
		success: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pregate_request_success_total",
			Help: "Sequences that finished, by finish reason (stop: an EOS or stop token; length: max_tokens)."}, []string{"finished_reason"}),
		generationTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_generation_tokens_total",
			Help: "Tokens generated."}),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_prompt_tokens_total",
			Help: "Prompt tokens of the sequences started (again when a preempted one restarts)."}),
		preemptions: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_num_preemptions_total",
			Help: "Running sequences sent back to the queue to make room in the KV-cache budget (recomputed when readmitted)."}),
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
	return []prometheus.Collector{m.running, m.waiting, m.kvReserved, m.kvUsage, m.queueTime, m.prefillTime, m.decodeTime,
		m.ttft, m.itl, m.e2e, m.requests, m.success, m.generationTokens, m.promptTokens, m.preemptions}
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}

// setReserved sets the cache gauges to the running sequences' reservations, of budget (0: none).
func (m *metrics) setReserved(bytes, budget int64) {
	m.kvReserved.Set(float64(bytes))
	if budget > 0 {
		m.kvUsage.Set(float64(bytes) / float64(budget))
	} else {
		m.kvUsage.Set(0)
	}
}

// finished records a sequence that ended well.
func (m *metrics) finished(q *sequence, finish string, now time.Time) {
	m.e2e.Observe(now.Sub(q.queued).Seconds())
	m.decodeTime.Observe(now.Sub(q.first).Seconds())
	m.success.WithLabelValues(finish).Inc()
}
