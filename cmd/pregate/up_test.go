package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pregate/pregate/bench"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/routing"
)

// TestUpDemoServes runs `pregate up --demo` with Mistral's tokenizer as `make demo` does, waits for
// cluster.json, and sends the README's requests (token ids, then text); `pregate status` then sees
// the cluster and its worker.
func TestUpDemoServes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole cluster and imports a 100 MB model")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	// The scheduler's flags reach the worker: every request below fits 200 tokens and 1 MiB of
	// KV cache (8 KiB a token: 8 layers, 2 KV heads of 64).
	cmd.SetArgs([]string{"up", "--demo", "--tokenizer", filepath.Join("..", "..", "model", "tokenizer", "testdata", "mistral"),
		"--data-dir", dir, "--http", "127.0.0.1:0", "--log-level", "error", "--max-model-len", "200", "--kv-cache-bytes", "1MiB",
		"--kv-cache-preemption", "--max-running", "8", "--max-num-batched-tokens", "64", "--queue-timeout", "30s", "--request-timeout", "2m"})
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	var cf clusterFile
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
		if err == nil && json.Unmarshal(b, &cf) == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("pregate up exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cluster.json after 60 s\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(cf.EtcdEndpoints) == 0 || cf.Coordinator == "" || len(cf.Stores) != 3 || cf.WorkerHTTP == "" {
		t.Fatalf("cluster.json %+v", cf)
	}
	body := `{"model":"` + cf.Model + `","prompt":[1,2,3],"max_tokens":8,"temperature":0,"return_token_ids":true}`
	resp, err := http.Post("http://"+cf.WorkerHTTP+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var c struct {
		Choices []struct {
			TokenIDs []int `json:"token_ids"`
		} `json:"choices"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(raw, &c) != nil || len(c.Choices) != 1 || len(c.Choices[0].TokenIDs) != 8 {
		t.Fatalf("completion: %s %s", resp.Status, raw)
	}
	// The demo speaks text: "Hello, world" is <s> and four pieces of Mistral's vocabulary.
	body = `{"model":"` + cf.Model + `","prompt":"Hello, world","max_tokens":8,"temperature":0,"ignore_eos":true,"return_token_ids":true}`
	resp, err = http.Post("http://"+cf.WorkerHTTP+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var tc struct {
		Choices []struct {
			Text           string `json:"text"`
			TokenIDs       []int  `json:"token_ids"`
			PromptTokenIDs []int  `json:"prompt_token_ids"`
		} `json:"choices"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(raw, &tc) != nil || len(tc.Choices) != 1 || len(tc.Choices[0].TokenIDs) != 8 ||
		!slices.Equal(tc.Choices[0].PromptTokenIDs, []int{1, 22557, 28725, 1526}) || tc.Choices[0].Text == "" {
		t.Fatalf("text completion: %s %s", resp.Status, raw)
	}
	// --max-model-len and --kv-cache-bytes: the worker lists the one and answers 400 naming each.
	resp, err = http.Get("http://" + cf.WorkerHTTP + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(raw), `"max_model_len":200`) {
		t.Errorf("/v1/models with --max-model-len 200: %s", raw)
	}
	for _, tt := range []struct{ maxTokens, limit string }{{"198", "200"}, {"190", "1048576"}} {
		body = `{"model":"` + cf.Model + `","prompt":[1,2,3],"max_tokens":` + tt.maxTokens + `}`
		resp, err = http.Post("http://"+cf.WorkerHTTP+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(raw), tt.limit) {
			t.Errorf("3 prompt tokens and max_tokens %s: %s %s, want 400 naming %s", tt.maxTokens, resp.Status, raw, tt.limit)
		}
	}
	// Mutual TLS is on by default: the certificates are in the data dir, and a plaintext client
	// gets nothing from a store (the worker's completion above went over TLS).
	if _, err := os.Stat(filepath.Join(dir, "certs", "ca.crt")); err != nil {
		t.Errorf("no CA in the data dir: %v", err)
	}
	plain := client.New(client.Config{AttemptTimeout: 2 * time.Second})
	defer plain.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if _, err := plain.Stats(sctx, routing.Replica{Store: "store-0", GRPCAddr: cf.Stores[0]}); err == nil {
		t.Error("a plaintext client was answered by a store of `pregate up`")
	}
	// `pregate complete`, the smoke test `helm test` runs, against the same worker.
	out, stderrOut, err := runCmd(t, "complete", "--url", cf.WorkerHTTP, "--model", cf.Model, "--prompt-ids", "1 2 3", "--max-tokens", "4")
	if fields := strings.Fields(strings.SplitN(out, "\t", 2)[0]); err != nil || len(fields) != 4 || !strings.Contains(out, "(length)") {
		t.Fatalf("complete: %v %q %s", err, out, stderrOut)
	}
	if _, _, err := runCmd(t, "complete", "--url", cf.WorkerHTTP, "--model", "no-such-model", "--max-tokens", "1"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("complete with an unknown model: %v, want the worker's 404", err)
	}
	// The serving benchmark against it: every request answered with every token, latencies that
	// make sense (the first token before the last).
	out, stderrOut, err = runCmd(t, "bench", "serve", "--url", cf.WorkerHTTP, "--model", cf.Model, "--concurrency", "1,3",
		"--requests", "6", "--prompt-len", "5", "--max-tokens", "4", "--vocab", "100", "-o", "json")
	var runs []bench.ServeResult
	if err != nil || json.Unmarshal([]byte(out), &runs) != nil || len(runs) != 2 {
		t.Fatalf("bench serve: %v %q %s", err, out, stderrOut)
	}
	for _, r := range runs {
		if r.Requests != 6 || r.Failed != 0 || r.OutputTokens != 24 || r.TTFT.P50 <= 0 || r.TTFT.P50 > r.E2E.P50 || r.ITL.P50 <= 0 {
			t.Errorf("bench serve at concurrency %d: %+v", r.Concurrency, r)
		}
	}
	t.Run("openai-sdk", func(t *testing.T) { openAISDK(t, "http://"+cf.WorkerHTTP+"/v1", cf.Model) })
	out, _, err = runCmd(t, "status", "--cluster-file", filepath.Join(dir, "cluster.json"), "-o", "json")
	var st map[string]any
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if summaryInt(t, st, "stores_alive") != 3 || summaryInt(t, st, "workers") != 1 || summaryInt(t, st, "models") != 1 {
		t.Fatalf("status summary %v", st["summary"])
	}
	// Its etcd speaks mutual TLS: `pregate drain` given only the etcd URL (the attack that once
	// emptied a store) gets nothing.
	if _, _, err := runCmd(t, "drain", "--etcd-endpoints", strings.Join(cf.EtcdEndpoints, ","), "store-0"); err == nil {
		t.Error("pregate drain without a certificate was accepted by `pregate up`'s etcd")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pregate up: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("pregate up did not stop on cancel")
	}
}

// openAISDKVersion is the official OpenAI Node SDK the tests drive the API with (5.x runs on the
// Node.js 20 of this project's machines).
const openAISDKVersion = "5.23.2"

// openAISDK runs testdata/openai_sdk.mjs, the official OpenAI Node SDK against the worker at
// baseURL, and checks what it saw: text completions, a stream with its usage, stop strings,
// logprobs, chat completions whole and streamed, errors as the SDK's error classes. The SDK is installed from the npm registry into a cache directory once.
func openAISDK(t *testing.T, baseURL, model string) {
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		t.Skip("no node or npm on PATH: the OpenAI SDK tests need Node.js")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "pregate-openai-sdk-"+openAISDKVersion)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai")); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		install := exec.Command(npm, "install", "--no-audit", "--no-fund", "--prefix", dir, "openai@"+openAISDKVersion)
		if out, err := install.CombinedOutput(); err != nil {
			t.Fatalf("npm install openai@%s: %v\n%s", openAISDKVersion, err, out)
		}
	}
	script, err := os.ReadFile(filepath.Join("testdata", "openai_sdk.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "openai_sdk.mjs"), script, 0o644); err != nil {
		t.Fatal(err)
	}
	run := exec.Command(node, "openai_sdk.mjs")
	run.Dir = dir
	run.Env = append(os.Environ(), "BASE_URL="+baseURL, "MODEL="+model)
	var stderr bytes.Buffer
	run.Stderr = &stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("the SDK script: %v\n%s\n%s", err, out, stderr.String())
	}
	type apiErr struct {
		Name       string `json:"name"`
		Status     int    `json:"status"`
		IsAPIError bool   `json:"isAPIError"`
	}
	var got struct {
		Completion struct {
			Text, Finish, Object string
			Usage                struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		TokenIDs struct {
			Finish           string
			CompletionTokens int
		} `json:"tokenIds"`
		Stream struct {
			Text, Finish string
			Chunks       int
			Usage        *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		Stop *struct {
			Word, Text, Finish string
		}
		Logprobs struct {
			Tokens        []string
			TokenLogprobs []float64
			Top           []int
		}
		Chat struct {
			Role, Content, Finish, Object string
			Usage                         struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		ChatStream struct {
			Role, Content string
			Usage         *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		UnknownModel, BadRequest, Unsupported *apiErr
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("the SDK script's output %q: %v", out, err)
	}
	t.Logf("OpenAI Node SDK %s: %s", openAISDKVersion, out)
	if got.Completion.Text == "" || got.Completion.Object != "text_completion" || got.Completion.Usage.CompletionTokens == 0 {
		t.Errorf("a text completion through the SDK: %+v", got.Completion)
	}
	if got.TokenIDs.CompletionTokens != 4 || got.TokenIDs.Finish != "length" {
		t.Errorf("a token-id completion through the SDK: %+v", got.TokenIDs)
	}
	if got.Stream.Text != got.Completion.Text || got.Stream.Chunks < 2 || got.Stream.Usage == nil ||
		got.Stream.Usage.CompletionTokens != got.Completion.Usage.CompletionTokens {
		t.Errorf("the stream through the SDK: %+v (the whole completion said %q)", got.Stream, got.Completion.Text)
	}
	if got.Stop == nil || got.Stop.Finish != "stop" || strings.Contains(got.Stop.Text, got.Stop.Word) ||
		!strings.HasPrefix(got.Completion.Text, got.Stop.Text) {
		t.Errorf("stop through the SDK: %+v (the whole completion %q)", got.Stop, got.Completion.Text)
	}
	if len(got.Logprobs.Tokens) != 3 || len(got.Logprobs.TokenLogprobs) != 3 || len(got.Logprobs.Top) != 3 {
		t.Errorf("logprobs through the SDK: %+v", got.Logprobs)
	}
	for i, lp := range got.Logprobs.TokenLogprobs {
		if lp > 0 || got.Logprobs.Top[i] < 2 {
			t.Errorf("logprobs through the SDK: token %d has logprob %v and %d alternatives", i, lp, got.Logprobs.Top[i])
		}
	}
	if got.Chat.Role != "assistant" || got.Chat.Object != "chat.completion" || got.Chat.Content == "" || got.Chat.Usage.CompletionTokens != 5 {
		t.Errorf("a chat completion through the SDK: %+v", got.Chat)
	}
	if got.ChatStream.Role != "assistant" || got.ChatStream.Content != got.Chat.Content || got.ChatStream.Usage == nil {
		t.Errorf("a streamed chat through the SDK: %+v (whole: %q)", got.ChatStream, got.Chat.Content)
	}
	for name, want := range map[string]struct {
		got  *apiErr
		name string
		code int
	}{
		"unknown model":     {got.UnknownModel, "NotFoundError", 404},
		"max_tokens -1":     {got.BadRequest, "BadRequestError", 400},
		"unsupported field": {got.Unsupported, "BadRequestError", 400},
	} {
		if want.got == nil || want.got.Name != want.name || want.got.Status != want.code || !want.got.IsAPIError {
			t.Errorf("%s through the SDK: %+v, want %s (%d)", name, want.got, want.name, want.code)
		}
	}
}

// TestUpTakesTheWorkersSchedulerFlags: `pregate up` passes its worker every scheduler flag that
// `pregate worker` has, with the same defaults.
func TestUpTakesTheWorkersSchedulerFlags(t *testing.T) {
	up, wk := newUpCmd().Flags(), newWorkerCmd().Flags()
	for _, name := range []string{"max-running", "max-waiting", "max-num-batched-tokens", "max-model-len", "kv-cache-bytes", "kv-cache-preemption", "queue-timeout", "request-timeout"} {
		u, w := up.Lookup(name), wk.Lookup(name)
		if u == nil || w == nil || u.DefValue != w.DefValue || u.Value.Type() != w.Value.Type() {
			t.Errorf("--%s: up %+v, worker %+v", name, u, w)
		}
	}
}

// TestPreemptionNeedsABudget: --kv-cache-preemption without --kv-cache-bytes is refused before the
// worker starts, naming both.
func TestPreemptionNeedsABudget(t *testing.T) {
	_, _, err := runCmd(t, "worker", "--model", "m", "--etcd-endpoints", "127.0.0.1:1", "--no-gossip", "--data-dir", t.TempDir(),
		"--http", "127.0.0.1:0", "--kv-cache-preemption")
	if err == nil || !strings.Contains(err.Error(), "--kv-cache-preemption") || !strings.Contains(err.Error(), "--kv-cache-bytes") {
		t.Fatalf("worker --kv-cache-preemption alone: %v", err)
	}
}
