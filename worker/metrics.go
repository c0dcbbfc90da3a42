package worker

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pregate/pregate/expertstore/client"
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

// fetchMetrics are the expert fetches' own: their latency as the pipeline sees it (failovers,
// hedges and a retry after a rebalance included), their failures, and the store client's totals.
type fetchMetrics struct {
	seconds prometheus.Histogram
	errors  prometheus.Counter
}

func newFetchMetrics(reg prometheus.Registerer, cl *client.Client) *fetchMetrics {
	m := &fetchMetrics{
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pregate_expert_fetch_seconds",
			Help:    "Time to fetch one expert from the stores into a staging buffer, failovers and hedges included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "pregate_expert_fetch_errors_total",
			Help: "Expert fetches that failed on every replica."}),
	}
	stat := func(name, help string, f func(client.FetchStats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(cl.FetchStats())) })
	}
	reg.MustRegister(m.seconds, m.errors,
		stat("pregate_fetch_blobs_total", "Blob fetches this worker made from the stores (collapsed ones counted once).", func(s client.FetchStats) int64 { return s.Fetches }),
		stat("pregate_fetch_failovers_total", "Fetch attempts that failed on one replica and moved on to the next.", func(s client.FetchStats) int64 { return s.Failovers }),
		stat("pregate_fetch_hedges_total", "Second replicas asked because the first was slower than usual.", func(s client.FetchStats) int64 { return s.Hedges }),
		stat("pregate_fetch_hedge_wins_total", "Hedged fetches the second replica answered first.", func(s client.FetchStats) int64 { return s.HedgeWins }),
		stat("pregate_fetch_collapsed_total", "Fetches that joined one already in flight for the same blob.", func(s client.FetchStats) int64 { return s.Collapsed }))
	return m
}

func (m *fetchMetrics) observe(d time.Duration, err error) {
	if err != nil {
		m.errors.Inc()
		return
	}
	m.seconds.Observe(d.Seconds())
}
