//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// httpClient dials the nodes from the host, through the bridge. No proxy: the environment's would
// not reach 198.18.0.0/15.
// Over HTTPS (a coordinator with TLS) it verifies nothing, as kubelet's probes and a scrape
// without a CA do: it reads /ready and /metrics, which need no certificate.
var httpClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // probes, as kubelet's
	Timeout: 3 * time.Minute,
}

// Completion is a greedy request for token ids from prompt ids (the OpenAI completions API, with
// vLLM's ignore_eos and return_token_ids).
type Completion struct {
	Model     string `json:"model"`
	Prompt    any    `json:"prompt"` // []int, or [][]int for a batch
	MaxTokens int    `json:"max_tokens"`
	IgnoreEOS bool   `json:"ignore_eos,omitempty"`
	Stream    bool   `json:"stream,omitempty"`
	// Temperature and ReturnTokenIDs are always 0 and true.
	Temperature    float64 `json:"temperature"`
	ReturnTokenIDs bool    `json:"return_token_ids"`
}

// Choice is one prompt's answer.
type Choice struct {
	Index        int    `json:"index"`
	TokenIDs     []int  `json:"token_ids"`
	FinishReason string `json:"finish_reason"`
}

// Complete POSTs c to the worker at base (a URL) and returns its choices by index.
func Complete(ctx context.Context, base string, c Completion) ([]Choice, error) {
	c.Temperature, c.ReturnTokenIDs, c.Stream = 0, true, false
	resp, err := post(ctx, base+"/v1/completions", c)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("POST /v1/completions: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	var out struct{ Choices []Choice }
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("POST /v1/completions: %v: %s", err, raw)
	}
	slices.SortFunc(out.Choices, func(a, b Choice) int { return a.Index - b.Index })
	return out.Choices, nil
}

// Stream runs c as a streaming completion of one prompt, calling got with the number of ids so
// far after every chunk, and returns the ids and the finish reason.
func Stream(ctx context.Context, base string, c Completion, got func(n int)) ([]int, string, error) {
	c.Temperature, c.ReturnTokenIDs, c.Stream = 0, true, true
	resp, err := post(ctx, base+"/v1/completions", c)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		return nil, "", fmt.Errorf("POST /v1/completions: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	var ids []int
	finish := ""
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			return ids, finish, nil
		}
		var chunk struct {
			Choices []struct {
				TokenIDs     []int   `json:"token_ids"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Error *struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &chunk); err != nil {
			return ids, finish, err
		}
		if chunk.Error != nil {
			return ids, finish, fmt.Errorf("stream error: %s", chunk.Error.Message)
		}
		for _, ch := range chunk.Choices {
			ids = append(ids, ch.TokenIDs...)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		if got != nil {
			got(len(ids))
		}
	}
	return ids, finish, fmt.Errorf("stream ended without [DONE]: %v", sc.Err())
}

func post(ctx context.Context, url string, body any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return httpClient.Do(req)
}

// Metrics is one scrape of a Prometheus text page: value by series, "name" or `name{k="v",…}`
// exactly as the page writes it.
type Metrics map[string]float64

// Scrape reads url (a /metrics page).
func Scrape(ctx context.Context, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	m := Metrics{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// Sum adds every series of the metric name (any labels).
func (m Metrics) Sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// Sub is m − before, series by series (counters over an interval).
func (m Metrics) Sub(before Metrics) Metrics {
	d := Metrics{}
	for k, v := range m {
		d[k] = v - before[k]
	}
	return d
}

// Quantile estimates the q-quantile of the unlabelled histogram name from its buckets (linear
// within a bucket, as Prometheus' histogram_quantile); NaN when it has no observations.
func (m Metrics) Quantile(name string, q float64) float64 {
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		le, ok := strings.CutPrefix(k, name+`_bucket{le="`)
		if !ok {
			continue
		}
		x, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
		if err == nil {
			bs = append(bs, bucket{x, v})
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return math.NaN()
	}
	rank := q * bs[len(bs)-1].n
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.n >= rank {
			if math.IsInf(b.le, 1) {
				return lo // beyond the last finite bucket: its bound is all we know
			}
			if b.n == below {
				return b.le
			}
			return lo + (b.le-lo)*(rank-below)/(b.n-below)
		}
		lo, below = b.le, b.n
	}
	return lo
}

// ClusterStatus is the part of `pregate status -o json` the scenarios read.
type ClusterStatus struct {
	Summary struct {
		Leader                 string `json:"leader"`
		StoresAlive            int    `json:"stores_alive"`
		StoresSuspect          int    `json:"stores_suspect"`
		StoresDead             int    `json:"stores_dead"`
		StoresStopped          int    `json:"stores_stopped"`
		StoresDraining         int    `json:"stores_draining"`
		ExpertsUnderReplicated int    `json:"experts_under_replicated"`
		ExpertsUnavailable     int    `json:"experts_unavailable"`
		DenseUnderReplicated   int    `json:"dense_under_replicated"`
		CopiesInFlight         int    `json:"copies_in_flight"`
		State                  string `json:"state"`
		Reason                 string `json:"reason"`
	} `json:"summary"`
	Stores []struct {
		Name     string `json:"name"`
		State    string `json:"state"` // alive, suspect, dead, stopped, left
		Blobs    int    `json:"blobs"`
		Held     int    `json:"held"`
		Used     int64  `json:"used"`
		Draining bool   `json:"draining"`
	} `json:"stores"`
}

// StoreUsed is the bytes status says the store name holds (0 when it lists none).
func (s ClusterStatus) StoreUsed(name string) int64 {
	for _, st := range s.Stores {
		if st.Name == name {
			return st.Used
		}
	}
	return 0
}

// Converged says every blob has its replicas and nothing is being copied.
func (s ClusterStatus) Converged() bool {
	return s.Summary.Leader != "" && s.Summary.ExpertsUnderReplicated == 0 && s.Summary.ExpertsUnavailable == 0 &&
		s.Summary.DenseUnderReplicated == 0 && s.Summary.CopiesInFlight == 0
}

// StoreState is the state status gives the store name, "" when it lists none.
func (s ClusterStatus) StoreState(name string) string {
	for _, st := range s.Stores {
		if st.Name == name {
			return st.State
		}
	}
	return ""
}

// percentile is the q-quantile (nearest rank) of ds; 0 for none.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[max(0, min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1))]
}
