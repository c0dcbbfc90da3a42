package worker_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/worker"
)

// TestAPIKeysAndMetricsListener: with API keys, the OpenAI API answers 401 without a valid one
// (missing, wrong, another scheme) and serves with it; probes stay open; /metrics moves to its own
// listener.
func TestAPIKeysAndMetricsListener(t *testing.T) {
	lc := startCluster(t, "mixtral-tiny")
	cfg := worker.DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.Model, cfg.Mode = "w-keys", lc.EtcdEndpoints(), "mixtral-tiny", worker.ModeOnDemand
	cfg.ExpertCache, cfg.HTTPAddr, cfg.DataDir, cfg.Threads = 64<<20, "127.0.0.1:0", t.TempDir(), 2
	cfg.APIKeys, cfg.MetricsAddr = []string{"sk-first", "sk-second"}, "127.0.0.1:0"
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	do := func(method, url, auth string) (int, string) {
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader(`{"model":"mixtral-tiny","prompt":[1,2],"max_tokens":2,"return_token_ids":true}`)
		}
		req, _ := http.NewRequest(method, url, body)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	api := "http://" + w.HTTPAddr()
	for _, auth := range []string{"", "Bearer sk-wrong", "Basic sk-first", "Bearer sk-firs", "Bearer sk-first-and-more"} {
		if code, body := do(http.MethodPost, api+"/v1/completions", auth); code != http.StatusUnauthorized || !strings.Contains(body, "invalid_api_key") {
			t.Errorf("Authorization %q: %d %s, want 401", auth, code, body)
		}
	}
	if code, _ := do(http.MethodGet, api+"/v1/models", ""); code != http.StatusUnauthorized {
		t.Errorf("/v1/models without a key: %d, want 401", code)
	}
	for _, key := range []string{"sk-first", "sk-second"} {
		if code, body := do(http.MethodPost, api+"/v1/completions", "Bearer "+key); code != http.StatusOK {
			t.Errorf("key %s: %d %s", key, code, body)
		}
	}
	for _, p := range []string{"/health", "/ready"} {
		if code, _ := do(http.MethodGet, api+p, ""); code != http.StatusOK {
			t.Errorf("%s without a key: %d, want 200", p, code)
		}
	}
	if code, _ := do(http.MethodGet, api+"/metrics", ""); code != http.StatusNotFound {
		t.Errorf("/metrics on the API port: %d, want 404 (it has its own listener)", code)
	}
	if code, body := do(http.MethodGet, "http://"+w.MetricsAddr()+"/metrics", ""); code != http.StatusOK || !strings.Contains(body, "pregate_num_requests_running") {
		t.Errorf("/metrics on its listener: %d", code)
	}
}

func TestLoadAPIKeys(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "keys")
	os.WriteFile(good, []byte("# clients\nsk-a\n\n  sk-b  \n"), 0o600)
	if keys, err := worker.LoadAPIKeys(good); err != nil || len(keys) != 2 || keys[0] != "sk-a" || keys[1] != "sk-b" {
		t.Errorf("keys %q, %v", keys, err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing\n\n"), 0o600)
	if _, err := worker.LoadAPIKeys(empty); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Errorf("a file with no key: %v", err)
	}
	if _, err := worker.LoadAPIKeys(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file: no error")
	}
}
