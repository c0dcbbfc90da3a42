package worker_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pregate/pregate/worker"
)

// TestShutdownDrains closes a worker while streams run, as SIGTERM does: /ready turns 503 at once,
// a new completion is refused with 503, every stream in flight runs to its end, and Close returns
// once they have.
func TestShutdownDrains(t *testing.T) {
	lc := startCluster(t, "mixtral-tiny")
	w := startWorker(t, lc, "mixtral-tiny", worker.ModeOnDemand, 4<<20, true)
	addr := w.HTTPAddr()
	const streams, tokens = 4, 128
	var (
		wg      sync.WaitGroup
		started sync.WaitGroup
		mu      sync.Mutex
		lens    []int
		errs    []error
	)
	started.Add(streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			once := sync.OnceFunc(started.Done)
			defer once()
			ids, finish, err := stream(context.Background(), addr, map[string]any{"model": "mixtral-tiny", "prompt": []int{1, 2, 3 + i},
				"max_tokens": tokens, "temperature": 0, "ignore_eos": true, "stream": true, "return_token_ids": true},
				func(int) { once() })
			mu.Lock()
			defer mu.Unlock()
			lens, errs = append(lens, len(ids)), append(errs, err)
			if err == nil && finish != "length" {
				t.Errorf("stream finished %q", finish)
			}
		}()
	}
	started.Wait() // every stream has its first tokens
	closed := make(chan struct{})
	go func() { w.Close(); close(closed) }()
	mu.Lock()
	if len(errs) == streams {
		t.Error("the test proves nothing: every stream ended before Close began")
	}
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/ready")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "shutting down") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/ready did not turn 503 after Close began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Post("http://"+addr+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"mixtral-tiny","prompt":[1],"max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "shutting_down") {
		t.Errorf("a completion during shutdown: %d %s", resp.StatusCode, body)
	}
	wg.Wait()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the streams ended")
	}
	for i, err := range errs {
		if err != nil || lens[i] != tokens {
			t.Errorf("stream %d: %d tokens, %v (want %d, no error)", i, lens[i], err, tokens)
		}
	}
}

// TestFailsWithoutEtcdWhileLoading starts a worker whose etcd never answers: it keeps trying for
// EtcdGiveUp, then fails, naming etcd (`pregate worker` exits non-zero with it).
func TestFailsWithoutEtcdWhileLoading(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	cfg := worker.DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.Model, cfg.Mode = "w-noetcd", []string{dead}, "m", worker.ModeOnDemand
	cfg.HTTPAddr, cfg.DataDir, cfg.EtcdGiveUp = "127.0.0.1:0", t.TempDir(), 2*time.Second
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	select {
	case <-w.Failed():
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not give up on an etcd that never answers")
	}
	if err := w.Err(); err == nil || !strings.Contains(err.Error(), "etcd") || !strings.Contains(err.Error(), dead) {
		t.Errorf("failure %v, want it to name etcd at %s", err, dead)
	}
}
