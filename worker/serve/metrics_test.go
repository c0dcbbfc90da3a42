package serve

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// histogramSum is a histogram's sum of observations.
func histogramSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleSum()
		}
	}
	t.Fatalf("no histogram %s", name)
	return 0
}

// TestMetricsMove: the vLLM-named metrics follow two requests over HTTP, one holding the whole
// KV-cache budget while the other waits for it.
func TestMetricsMove(t *testing.T) {
	m := loadModel(t, "switch-tiny")
	info := m.Info()
	long := info.AdmitBytes(3, 2000)
	budget := long + info.AdmitBytes(3, 2)/2 // the long request leaves too little for the short one
	ts := newTestServer(t, "switch-tiny", m, func(c *Config) { c.KVCacheBytes = budget })
	value := func(name string, labels ...string) float64 { return metricValue(t, ts.reg, name, labels...) }
	want := func(name string, v float64, labels ...string) {
		t.Helper()
		if got := value(name, labels...); got != v {
			t.Errorf("%s%v = %v, want %v", name, labels, got, v)
		}
	}
	for _, name := range []string{"pregate_num_requests_running", "pregate_num_requests_waiting", "pregate_kv_cache_usage_perc",
		"pregate_request_queue_time_seconds", "pregate_time_to_first_token_seconds", "pregate_generation_tokens_total"} {
		want(name, 0)
	}

	_, stopLong := streamUntil(t, ts, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2000, "temperature": 0, "ignore_eos": true, "stream": true}, 2)
	defer stopLong()
	want("pregate_num_requests_running", 1)
	want("pregate_kv_cache_reserved_bytes", float64(long))
	want("pregate_kv_cache_usage_perc", float64(long)/float64(budget))
	for _, name := range []string{"pregate_request_queue_time_seconds", "pregate_request_prefill_time_seconds", "pregate_time_to_first_token_seconds"} {
		want(name, 1) // a histogram's count
	}

	short := make(chan error, 1)
	go func() {
		resp, b, err := tryPost(context.Background(), ts.url, map[string]any{"prompt": []int{5, 6, 7}, "max_tokens": 2, "temperature": 0, "ignore_eos": true})
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		short <- err
	}()
	eventually(t, "the short request waiting", func() bool { return value("pregate_num_requests_waiting") == 1 })
	waiting := time.Now()
	want("pregate_request_queue_time_seconds", 1) // not yet admitted
	held := time.Since(waiting)
	stopLong()
	if err := <-short; err != nil {
		t.Fatal(err)
	}

	want("pregate_num_requests_waiting", 0)
	want("pregate_request_queue_time_seconds", 2)
	if got := histogramSum(t, ts.reg, "pregate_request_queue_time_seconds"); got < held.Seconds() {
		t.Errorf("queue time sum %v s, but the short request waited at least %v", got, held)
	}
	want("pregate_request_prefill_time_seconds", 2)
	want("pregate_time_to_first_token_seconds", 2)
	// Only the short request finished (the long one's client went away).
	for _, name := range []string{"pregate_request_decode_time_seconds", "pregate_request_inference_time_seconds",
		"pregate_e2e_request_latency_seconds", "pregate_request_prompt_tokens", "pregate_request_generation_tokens"} {
		want(name, 1)
	}
	if p, g := histogramSum(t, ts.reg, "pregate_request_prompt_tokens"), histogramSum(t, ts.reg, "pregate_request_generation_tokens"); p != 3 || g != 2 {
		t.Errorf("the finished request's tokens: %v prompt, %v generated; want 3 and 2", p, g)
	}
	want("pregate_request_success_total", 1, "finished_reason", "length")
	want("pregate_prompt_tokens_total", 6)
	gen := value("pregate_generation_tokens_total")
	if gen < 2+2 {
		t.Errorf("%v tokens generated, want the short request's 2 and at least the long one's 2", gen)
	}
	want("pregate_inter_token_latency_seconds", gen-2) // every token but each sequence's first
	if e2e, decode := histogramSum(t, ts.reg, "pregate_e2e_request_latency_seconds"), histogramSum(t, ts.reg, "pregate_request_decode_time_seconds"); e2e < decode || e2e < held.Seconds() {
		t.Errorf("e2e latency %v s, decode time %v s; the request waited %v", e2e, decode, held)
	}
	eventually(t, "nothing running", func() bool { return value("pregate_num_requests_running") == 0 })
	eventually(t, "an empty cache", func() bool { return value("pregate_kv_cache_usage_perc") == 0 })
	want("pregate_kv_cache_reserved_bytes", 0)

	resp, err := http.Get(ts.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	if _, err := io.Copy(&body, resp.Body); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"# TYPE pregate_kv_cache_usage_perc gauge", "# TYPE pregate_request_queue_time_seconds histogram",
		"# TYPE pregate_num_preemptions_total counter", `pregate_request_success_total{finished_reason="length"} 1`} {
		if !strings.Contains(body.String(), line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}
