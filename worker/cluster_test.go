package worker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pregate/pregate/cluster"
	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/coordinator"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/golden"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
	"github.com/pregate/pregate/routing"
	"github.com/pregate/pregate/worker"
)

func fixture(name string) string { return filepath.Join("..", "testdata", name) }

// goldenPrompts returns a fixture's unpadded prompts and HF's generated ids for them.
func goldenPrompts(t *testing.T, dir string) (prompts, want [][]int) {
	t.Helper()
	prompts, want, err := golden.Prompts(dir)
	if err != nil {
		t.Fatal(err)
	}
	return prompts, want
}

func startCluster(t *testing.T, fixtures ...string) *cluster.Local {
	t.Helper()
	return startClusterWith(t, nil, fixtures...)
}

// startClusterWith is startCluster with adjust applied to the cluster's configuration.
func startClusterWith(t *testing.T, adjust func(*cluster.Config), fixtures ...string) *cluster.Local {
	t.Helper()
	cfg := cluster.Config{Dir: t.TempDir(), Stores: 3, Replicas: 2, StoreCapacity: 256 << 20, Fast: true}
	if adjust != nil {
		adjust(&cfg)
	}
	lc, err := cluster.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lc.WaitStores(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for _, fx := range fixtures {
		if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: fixture(fx), Name: fx}); err != nil {
			t.Fatal(err)
		}
	}
	return lc
}

func startWorker(t *testing.T, lc *cluster.Local, name string, mode worker.Mode, cache int64, wait bool) *worker.Worker {
	t.Helper()
	return startWorkerWith(t, lc, name, mode, cache, wait, nil)
}

// startWorkerWith is startWorker with adjust applied to the worker's configuration.
func startWorkerWith(t *testing.T, lc *cluster.Local, name string, mode worker.Mode, cache int64, wait bool, adjust func(*worker.Config)) *worker.Worker {
	t.Helper()
	cfg := worker.DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.Model, cfg.Mode = "w-"+name+"-"+string(mode), lc.EtcdEndpoints(), name, mode
	cfg.ExpertCache, cfg.HTTPAddr, cfg.DataDir, cfg.Threads = cache, "127.0.0.1:0", t.TempDir(), 2
	cfg.FetchAttemptTimeout = 2 * time.Second
	if adjust != nil {
		adjust(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if wait {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

type completion struct {
	Choices []struct {
		Index        int    `json:"index"`
		Text         string `json:"text"`
		TokenIDs     []int  `json:"token_ids"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
}

func complete(t *testing.T, addr string, body map[string]any) completion {
	t.Helper()
	var c completion
	postJSON(t, addr, "/v1/completions", body, &c)
	return c
}

// postJSON posts body to the worker's path, which must answer 200, and decodes the answer into out.
func postJSON(t *testing.T, addr, path string, body map[string]any, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post("http://"+addr+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s: %s", path, resp.Status, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
}

// TestEveryModeOverHTTPGivesTheGoldenTokens runs a worker per fixture and mode on a cluster of 3
// stores and checks the generated ids against HF's.
func TestEveryModeOverHTTPGivesTheGoldenTokens(t *testing.T) {
	fixtures := []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"}
	lc := startCluster(t, fixtures...)
	for _, fx := range fixtures {
		prompts, want := goldenPrompts(t, fixture(fx))
		for _, mode := range worker.Modes {
			if worker.CheckMode(mode, fx == "switch-tiny-pregated") != nil {
				continue
			}
			t.Run(fx+"/"+string(mode), func(t *testing.T) {
				w := startWorker(t, lc, fx, mode, 64<<20, true)
				c := complete(t, w.HTTPAddr(), map[string]any{"model": fx, "prompt": prompts, "max_tokens": 10, "temperature": 0, "return_token_ids": true})
				if len(c.Choices) != len(want) {
					t.Fatalf("%d choices, want %d", len(c.Choices), len(want))
				}
				for _, ch := range c.Choices {
					if !slices.Equal(ch.TokenIDs, want[ch.Index]) {
						t.Errorf("prompt %d: %v, want %v", ch.Index, ch.TokenIDs, want[ch.Index])
					}
				}
				var fetched int64
				for _, s := range w.Pipeline().Stats() {
					fetched += s.FetchedBytes
				}
				if fetched == 0 {
					t.Error("no expert bytes fetched from the stores")
				}
				resp, err := http.Get("http://" + w.HTTPAddr() + "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				metrics, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				for _, name := range []string{"pregate_num_requests_running", "pregate_num_requests_waiting", "pregate_time_to_first_token_seconds",
					"pregate_inter_token_latency_seconds", `pregate_moe_stall_seconds_total{block="0"}`, "pregate_moe_fetched_bytes_total",
					"pregate_expert_cache_hits_total", "pregate_expert_cache_misses_total", "pregate_prediction_hits_total",
					"pregate_prediction_misses_total", "pregate_expert_cache_peak_bytes", "pregate_expert_fetch_seconds_bucket",
					"pregate_fetch_blobs_total", "pregate_fetch_failovers_total", "pregate_fetch_hedges_total", "pregate_expert_fetch_errors_total 0"} {
					if !strings.Contains(string(metrics), name) {
						t.Errorf("/metrics lacks %s", name)
					}
				}
			})
		}
	}
}

// stream runs one streaming completion and returns its token ids and finish reason.
func stream(ctx context.Context, addr string, body map[string]any, got func(n int)) ([]int, string, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/completions", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		return nil, "", fmt.Errorf("%s: %s", resp.Status, raw)
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
		var c struct {
			Choices []struct {
				TokenIDs     []int   `json:"token_ids"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Error *struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			return ids, finish, err
		}
		if c.Error != nil {
			return ids, finish, fmt.Errorf("stream error: %s", c.Error.Message)
		}
		for _, ch := range c.Choices {
			ids = append(ids, ch.TokenIDs...)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		got(len(ids))
	}
	return ids, finish, fmt.Errorf("stream ended without [DONE]: %v", sc.Err())
}

// streamDuring runs 32 streaming generations on a worker of mixtral-tiny whose cache holds a few
// experts (so it fetches throughout), calls disturb once every stream has its first tokens, and
// checks that none failed and every output equals the local engine's. It returns the expert
// fetches made before and after disturb.
func streamDuring(t *testing.T, lc *cluster.Local, disturb func()) (before, after int64) {
	t.Helper()
	const fx, n, tokens = "mixtral-tiny", 32, 24
	ckpt, err := model.OpenCheckpoint(fixture(fx))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	cpu := compute.NewCPU(2)
	defer cpu.Close()
	ref, err := engine.Load(ckpt, cpu, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden, _ := goldenPrompts(t, fixture(fx))
	prompts := make([][]int, n)
	for i := range prompts {
		p := slices.Clone(golden[i%len(golden)])
		prompts[i] = append(p, 7+i, 100+3*i) // distinct prompts
	}
	want := make([][]int, n)
	for i, p := range prompts {
		res, _, err := engine.Generate(context.Background(), ref, [][]int{p}, engine.GenerateOptions{MaxNewTokens: tokens, IgnoreEOS: true})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res[0].GeneratedIDs
	}

	// 12 experts of 98 KiB: under two layers' worth of the 8 a batch of 32 touches per layer.
	w := startWorker(t, lc, fx, worker.ModeSpeculative, 12*98752, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var started sync.WaitGroup
	started.Add(n)
	type result struct {
		ids    []int
		finish string
		err    error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			once := sync.Once{}
			body := map[string]any{"model": fx, "prompt": prompts[i], "max_tokens": tokens, "stream": true, "ignore_eos": true, "return_token_ids": true, "temperature": 0}
			ids, finish, err := stream(ctx, w.HTTPAddr(), body, func(k int) {
				if k >= 2 {
					once.Do(started.Done)
				}
			})
			once.Do(started.Done)
			results[i] = result{ids, finish, err}
		}()
	}
	started.Wait()
	fetches := func() (n int64) {
		for _, s := range w.Pipeline().Stats() {
			n += s.Fetches
		}
		return n
	}
	before = fetches()
	disturb()
	wg.Wait()
	after = fetches() - before
	for i, r := range results {
		if r.err != nil {
			t.Errorf("generation %d failed: %v", i, r.err)
			continue
		}
		if r.finish != "length" || !slices.Equal(r.ids, want[i]) {
			t.Errorf("generation %d: %v (%s), want %v", i, r.ids, r.finish, want[i])
		}
	}
	return before, after
}

// TestStoreKilledDuringStreaming kills one of three stores (R=2) while 32 streaming generations
// run: none may fail and every output must equal the local engine's.
func TestStoreKilledDuringStreaming(t *testing.T) {
	lc := startCluster(t, "mixtral-tiny")
	before, after := streamDuring(t, lc, func() {
		if err := lc.KillStore("store-1"); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("expert fetches: %d before the kill, %d after", before, after)
	if after == 0 {
		t.Error("no expert was fetched after the kill: the test proved nothing")
	}
}

// TestScaleOutDuringStreaming adds two stores while 32 streaming generations run: the coordinator
// moves experts to them (copy, then drop and delete the old replicas) under the worker's fetches,
// which must follow placement without failing.
func TestScaleOutDuringStreaming(t *testing.T) {
	lc := startCluster(t, "mixtral-tiny")
	co := lc.Coordinator()
	copied := co.BytesCopied()
	before, after := streamDuring(t, lc, func() {
		for range 2 {
			if _, err := lc.AddStore(); err != nil {
				t.Fatal(err)
			}
		}
		// Let the rebalance run under the streams.
		deadline := time.Now().Add(10 * time.Second)
		for co.BytesCopied() == copied && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	})
	moved := co.BytesCopied() - copied
	t.Logf("expert fetches: %d before the new stores, %d after; %d bytes rebalanced", before, after, moved)
	if moved == 0 || after == 0 {
		t.Errorf("the test proved nothing: %d bytes moved, %d fetches after", moved, after)
	}
}

// TestLostReplicasDuringStreaming deletes a replica of every expert behind the coordinator's back
// (from one store's RAM and disk) and restarts another store with an empty data dir while 32
// streaming generations run: fetches fail over to the replicas left, none of the generations
// fails, and the coordinator puts every lost replica back.
func TestLostReplicasDuringStreaming(t *testing.T) {
	lc := startClusterWith(t, func(c *cluster.Config) {
		c.Persist = true
		c.Coordinator = func(cc *coordinator.Config) {
			cc.AntiEntropyInterval, cc.DeadGrace = time.Second, 30*time.Second
		}
	}, "mixtral-tiny")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := client.New(client.DefaultConfig())
	defer cl.Close()
	co := lc.Coordinator()
	before, after := streamDuring(t, lc, func() {
		exp, _, _, err := lc.Placement().Placements(ctx, "mixtral-tiny")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range exp {
			if slices.Contains(p.Ready(), "store-1") {
				continue // its replica there goes with the restart below; the other must stay
			}
			s := p.Ready()[0]
			st := lc.Store(s)
			if _, err := cl.Delete(ctx, routing.Replica{Store: s, GRPCAddr: st.Addr()}, p.Digest); err != nil {
				t.Fatal(err)
			}
		}
		if err := lc.KillStore("store-1"); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(lc.StoreDir("store-1"), "blobs")); err != nil {
			t.Fatal(err)
		}
		if _, err := lc.StartStore("store-1"); err != nil {
			t.Fatal(err)
		}
	})
	for co.Counters().MissingReplicas == 0 || !converged(ctx, lc) {
		if ctx.Err() != nil {
			t.Fatalf("the lost replicas were not restored: %d found missing", co.Counters().MissingReplicas)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("expert fetches: %d before, %d after the losses; %d missing replicas restored", before, after, co.Counters().MissingReplicas)
	if after == 0 {
		t.Error("no expert was fetched after the losses: the test proved nothing")
	}
}

// converged reports whether every blob has R ready replicas on alive stores and the stores hold
// what placement says.
func converged(ctx context.Context, lc *cluster.Local) bool {
	st, err := coordinator.ReadStatus(ctx, lc.Etcd(), lc.Placement(), 2)
	return err == nil && st.Summary.State == coordinator.StateHealthy && st.Summary.CopiesInFlight == 0
}

// TestReadyWaitsForTheModel starts a worker before its model is imported: /health answers at once,
// /ready and /v1 answer 503 until the import, then it serves.
func TestReadyWaitsForTheModel(t *testing.T) {
	lc := startCluster(t)
	w := startWorker(t, lc, "later", worker.ModeOnDemand, 64<<20, false)
	get := func(path string) int {
		resp, err := http.Get("http://" + w.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if get("/health") != 200 || get("/ready") != 503 || get("/v1/models") != 503 {
		t.Fatalf("before import: health %d, ready %d, models %d", get("/health"), get("/ready"), get("/v1/models"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: fixture("mixtral-tiny"), Name: "later"}); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if get("/ready") != 200 || get("/v1/models") != 200 {
		t.Fatalf("after import: ready %d, models %d", get("/ready"), get("/v1/models"))
	}
	for {
		st, err := coordinator.ReadStatus(ctx, lc.Etcd(), lc.Placement(), 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Workers) == 1 && st.Workers[0].Model == "later" && st.Workers[0].HTTPAddr == w.HTTPAddr() {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("status workers %+v", st.Workers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDrainDuringStreaming drains a store while 32 streaming generations run: its experts are
// copied elsewhere and deleted from it under the worker's fetches.
func TestDrainDuringStreaming(t *testing.T) {
	lc := startCluster(t, "mixtral-tiny")
	co := lc.Coordinator()
	copied := co.BytesCopied()
	before, after := streamDuring(t, lc, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := lc.Placement().SetDrain(ctx, true, "store-0"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for lc.Store("store-0").Stats().Blobs > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Logf("expert fetches: %d before the drain, %d after; %d bytes moved; store-0 holds %d blobs",
		before, after, co.BytesCopied()-copied, lc.Store("store-0").Stats().Blobs)
	if co.BytesCopied() == copied || after == 0 {
		t.Error("the test proved nothing: nothing moved or nothing was fetched after the drain began")
	}
}

// TestWorkerLoadsTheTokenizer: a synthetic model with a real tokenizer attached (pregate synth
// --tokenizer) is imported with its tokenizer files and chat template; the worker loads the
// tokenizer with the model, and text goes through it to the model and back.
func TestWorkerLoadsTheTokenizer(t *testing.T) {
	tokDir := t.TempDir()
	spm, err := os.ReadFile(filepath.Join("..", "model", "tokenizer", "testdata", "unigram", "spiece.model"))
	if err != nil {
		t.Fatal(err)
	}
	const tmpl = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
	for name, b := range map[string][]byte{"spiece.model": spm,
		"tokenizer_config.json": []byte(`{"eos_token": "</s>", "add_bos_token": false, "add_eos_token": false, "chat_template": "` + tmpl + `"}`)} {
		if err := os.WriteFile(filepath.Join(tokDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	opts := synth.Options{Arch: synth.ArchMixtral, Preset: "mixtral-tiny", Out: dir, Seed: 3, Layers: 2, Experts: 4,
		DModel: 32, DFF: 64, Heads: 4, Vocab: 1024, Tokenizer: tokDir}
	if err := synth.Write(opts, nil); err != nil {
		t.Fatal(err)
	}
	lc := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: dir, Name: "texty"}); err != nil {
		t.Fatal(err)
	}
	man, _, err := lc.Placement().Manifest(ctx, "texty")
	if err != nil {
		t.Fatal(err)
	}
	if man.Tokenizer != "spiece.model" || man.ChatTemplate != tmpl {
		t.Fatalf("manifest tokenizer %q, chat template %q", man.Tokenizer, man.ChatTemplate)
	}
	w := startWorker(t, lc, "texty", worker.ModeOnDemand, 64<<20, true)
	tok := w.Tokenizer()
	if tok == nil || tok.VocabSize() != 1000 || tok.ChatTemplate() != tmpl {
		t.Fatalf("worker tokenizer %v", tok)
	}
	// Text in, text out over the OpenAI API.
	c := complete(t, w.HTTPAddr(), map[string]any{"model": "texty", "prompt": "Hello world", "max_tokens": 4, "temperature": 0,
		"ignore_eos": true, "return_token_ids": true})
	prompt, _ := tok.Encode("Hello world", true)
	whole := tok.Decode(append(prompt, c.Choices[0].TokenIDs...), true)
	if len(c.Choices) != 1 || len(c.Choices[0].TokenIDs) != 4 || "Hello world"+c.Choices[0].Text != whole {
		t.Fatalf("completion %+v: the text does not continue the prompt's to %q", c, whole)
	}
	t.Logf("%q → %v → %q", "Hello world", c.Choices[0].TokenIDs, c.Choices[0].Text)

	// Chat through the imported template (it concatenates the contents): the same prompt, so the
	// same answer.
	var chat struct {
		Choices []struct {
			Message struct{ Role, Content string } `json:"message"`
		} `json:"choices"`
	}
	postJSON(t, w.HTTPAddr(), "/v1/chat/completions", map[string]any{"model": "texty", "messages": []map[string]any{
		{"role": "user", "content": "Hello "}, {"role": "assistant", "content": "world"}}, "max_tokens": 4, "temperature": 0, "ignore_eos": true}, &chat)
	if len(chat.Choices) != 1 || chat.Choices[0].Message.Role != "assistant" || chat.Choices[0].Message.Content != c.Choices[0].Text {
		t.Fatalf("chat %+v, want %q", chat, c.Choices[0].Text)
	}

	// A tokenizer with more ids than the model's vocabulary is refused at import.
	small := t.TempDir()
	opts.Out, opts.Tokenizer, opts.Vocab = small, "", 512
	if err := synth.Write(opts, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(small, "spiece.model"), spm, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := coordinator.Import(ctx, lc.Placement(), coordinator.ImportOptions{Dir: small, Name: "too-small"}); err == nil ||
		!strings.Contains(err.Error(), "vocab_size 512") {
		t.Fatalf("import of a model smaller than its tokenizer: %v", err)
	}
}
