package worker

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// blockStats counts one MoE block's events (atomics: read by metrics and benchmarks).
type blockStats struct {
	stallNanos, fetchedBytes, fetches  atomic.Int64
	hits, misses, predHits, predMisses atomic.Int64
	acquires, refetches                atomic.Int64
}

// BlockStats is a snapshot of one block's counters.
type BlockStats struct {
	StallSeconds                     float64
	FetchedBytes, Fetches, Acquires  int64
	CacheHits, CacheMisses           int64
	PredictionHits, PredictionMisses int64
	// Refetches counts experts evicted after their block wanted them and before it acquired them
	// (the budget was too tight for what was in flight), fetched again.
	Refetches int64
}

// Stats returns each MoE block's counters.
func (p *Pipeline) Stats() []BlockStats {
	out := make([]BlockStats, len(p.stats))
	for i := range p.stats {
		s := &p.stats[i]
		out[i] = BlockStats{StallSeconds: float64(s.stallNanos.Load()) / 1e9, FetchedBytes: s.fetchedBytes.Load(),
			Fetches: s.fetches.Load(), Acquires: s.acquires.Load(), CacheHits: s.hits.Load(), CacheMisses: s.misses.Load(),
			PredictionHits: s.predHits.Load(), PredictionMisses: s.predMisses.Load(), Refetches: s.refetches.Load()}
	}
	return out
}

// ResetStats zeroes every block's counters and sets the cache's peak to what it holds now: a
// benchmark measures from there (Prometheus sees the counters go back, as after a restart).
func (p *Pipeline) ResetStats() {
	for i := range p.stats {
		s := &p.stats[i]
		for _, c := range []*atomic.Int64{&s.stallNanos, &s.fetchedBytes, &s.fetches, &s.hits, &s.misses, &s.predHits, &s.predMisses, &s.acquires, &s.refetches} {
			c.Store(0)
		}
	}
	p.cache.ResetPeak()
}

// pipelineMetrics exports the per-block counters and the cache's bytes to Prometheus.
type pipelineMetrics struct{ p *Pipeline }

var (
	descStall     = prometheus.NewDesc("pregate_moe_stall_seconds_total", "Time MoE blocks waited for their experts.", []string{"block"}, nil)
	descFetched   = prometheus.NewDesc("pregate_moe_fetched_bytes_total", "Expert bytes fetched from stores.", []string{"block"}, nil)
	descHits      = prometheus.NewDesc("pregate_expert_cache_hits_total", "Experts a block used that were in the cache or on their way when it routed.", []string{"block"}, nil)
	descMisses    = prometheus.NewDesc("pregate_expert_cache_misses_total", "Experts a block used that had to be fetched when it routed.", []string{"block"}, nil)
	descPredHits  = prometheus.NewDesc("pregate_prediction_hits_total", "Experts a block used that were predicted during the previous block.", []string{"block"}, nil)
	descPredMiss  = prometheus.NewDesc("pregate_prediction_misses_total", "Experts a block used that were not predicted.", []string{"block"}, nil)
	descCacheUsed = prometheus.NewDesc("pregate_expert_cache_bytes", "Expert bytes held on the device.", nil, nil)
	descCachePeak = prometheus.NewDesc("pregate_expert_cache_peak_bytes", "Most expert bytes held on the device at once.", nil, nil)
	descCacheCap  = prometheus.NewDesc("pregate_expert_cache_budget_bytes", "The expert cache's byte budget.", nil, nil)
)

func newPipelineMetrics(reg prometheus.Registerer, p *Pipeline) *pipelineMetrics {
	m := &pipelineMetrics{p: p}
	reg.MustRegister(m)
	return m
}

// Describe implements prometheus.Collector.
func (m *pipelineMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStall, descFetched, descHits, descMisses, descPredHits, descPredMiss, descCacheUsed, descCachePeak, descCacheCap} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *pipelineMetrics) Collect(ch chan<- prometheus.Metric) {
	for b, s := range m.p.Stats() {
		l := strconv.Itoa(b)
		ch <- prometheus.MustNewConstMetric(descStall, prometheus.CounterValue, s.StallSeconds, l)
		ch <- prometheus.MustNewConstMetric(descFetched, prometheus.CounterValue, float64(s.FetchedBytes), l)
		ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(s.CacheHits), l)
		ch <- prometheus.MustNewConstMetric(descMisses, prometheus.CounterValue, float64(s.CacheMisses), l)
		ch <- prometheus.MustNewConstMetric(descPredHits, prometheus.CounterValue, float64(s.PredictionHits), l)
		ch <- prometheus.MustNewConstMetric(descPredMiss, prometheus.CounterValue, float64(s.PredictionMisses), l)
	}
	cs := m.p.cache.Stats()
	ch <- prometheus.MustNewConstMetric(descCacheUsed, prometheus.GaugeValue, float64(cs.Used))
	ch <- prometheus.MustNewConstMetric(descCachePeak, prometheus.GaugeValue, float64(cs.Peak))
	ch <- prometheus.MustNewConstMetric(descCacheCap, prometheus.GaugeValue, float64(cs.Budget))
}
