package expertstore

import (
	"context"
	"errors"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the store's Prometheus metrics. The gauges and totals read the counters Stats
// reports (each counted once); the gRPC ones come from go-grpc-middleware's interceptors (per-RPC
// counts by code and latency histograms); the data plane's latency is timed here.
type metrics struct {
	reg       *prometheus.Registry
	grpc      *grpcprom.ServerMetrics
	dataplane *prometheus.HistogramVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(0.0005, 4, 10)))),
		dataplane: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pregate_store_dataplane_request_seconds",
			Help:    "Time to answer one data-plane request (the whole blob range sent), by op and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"op", "outcome"}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	stat := func(f func() int64) func() float64 { return func() float64 { return float64(f()) } }
	m.reg.MustRegister(m.grpc, m.dataplane,
		gauge("pregate_store_blobs", "Blobs held.", stat(func() int64 { b, _ := s.usage(); return b })),
		gauge("pregate_store_used_bytes", "Blob bytes held (Puts in progress included).", stat(func() int64 { _, u := s.usage(); return u })),
		gauge("pregate_store_capacity_bytes", "The memory limit: blob bytes the store may hold.", func() float64 { return float64(s.cfg.MemoryLimit) }),
		gauge("pregate_store_quarantined_blobs", "Blobs of the data dir that failed their digest check.", stat(s.quarantined.Load)),
		gauge("pregate_store_inflight_bytes", "Bytes being sent and received now.", stat(s.inflightN.Load)),
		gauge("pregate_store_inflight_requests", "Fetch, Put and data-plane requests being answered now.", stat(s.inflightReqs.Load)),
		gauge("pregate_store_compressed_bytes", "Bytes held by compressed forms of blobs.", stat(s.compressedBytes.Load)),
		gauge("pregate_store_ready", "1 once the store serves (blobs loaded, gossip joined).", func() float64 {
			if s.Ready() == nil {
				return 1
			}
			return 0
		}),
		counter("pregate_store_fetches_total", "Fetches answered (gRPC and data plane).", stat(s.fetches.Load)),
		counter("pregate_store_served_bytes_total", "Blob bytes served to fetches.", stat(s.fetched.Load)),
		counter("pregate_store_received_bytes_total", "Blob bytes received by Puts and Copies that were kept.", stat(s.received.Load)),
		counter("pregate_store_rejected_total", "Requests refused because the in-flight bound was reached.", stat(s.rejected.Load)),
		counter("pregate_store_refused_connections_total", "Connections closed at once because a connection cap was reached.", stat(s.refusedConns.Load)),
		counter("pregate_store_denied_connections_total", "Data-plane connections closed after their TLS handshake because the peer's role may not read.", stat(s.deniedConns.Load)),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeData records one data-plane request.
func (m *metrics) observeData(op string, start time.Time, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.dataplane.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
}

// Ready reports nil when the store serves: its data dir is loaded and, with gossip, it has joined
// the cluster. Otherwise the error says what it waits for.
func (s *Server) Ready() error {
	select {
	case <-s.closing:
		return errors.New("shutting down")
	default:
	}
	if !s.serving.Load() {
		return errors.New("loading blobs")
	}
	return nil
}

// handler serves /health (the process works), /ready (Ready) and /metrics.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Err(); err != nil {
			http.Error(w, "failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n")) //nolint:errcheck // the client went away
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n")) //nolint:errcheck // the client went away
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// serveHTTP serves the handler on s.httpLis until the store closes.
func (s *Server) serveHTTP(context.Context) error {
	if err := s.http.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// HTTPAddr is the address of /health, /ready and /metrics ("" when disabled).
func (s *Server) HTTPAddr() string {
	if s.httpLis == nil {
		return ""
	}
	return s.pubHTTP
}
