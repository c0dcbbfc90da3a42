package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pregate/pregate/internal/golden"
)

// runCmd runs the pregate command line in process and returns its stdout and stderr.
func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// goldenPrompts returns a fixture's unpadded prompts and HF's generated ids for them.
func goldenPrompts(t *testing.T, dir string) (prompts, want [][]int) {
	t.Helper()
	prompts, want, err := golden.Prompts(dir)
	if err != nil {
		t.Fatal(err)
	}
	return prompts, want
}

func TestGenerateFixtures(t *testing.T) {
	for _, name := range []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("..", "..", "testdata", name)
			prompts, want := goldenPrompts(t, dir)
			args := []string{"generate", "--model", dir, "--max-new-tokens", "10", "--threads", "2", "-o", "json"}
			for _, p := range prompts {
				args = append(args, "--prompt-ids", strings.Trim(fmt.Sprint(p), "[]"))
			}
			stdout, stderr, err := runCmd(t, args...)
			if err != nil {
				t.Fatalf("generate: %v (stderr %q)", err, stderr)
			}
			var out generateOutput
			if err := json.Unmarshal([]byte(stdout), &out); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, stdout)
			}
			if len(out.Results) != len(want) {
				t.Fatalf("%d results, want %d", len(out.Results), len(want))
			}
			for i, r := range out.Results {
				if !slices.Equal(r.PromptIDs, prompts[i]) || !slices.Equal(r.GeneratedIDs, want[i]) {
					t.Errorf("result %d = %+v, want prompt %v generated %v", i, r, prompts[i], want[i])
				}
			}
			if out.Stats.DecodeTokensPerSecond <= 0 || out.Stats.DecodeTokens != 2*9 {
				t.Errorf("stats %+v: want 18 decode tokens at a positive rate", out.Stats)
			}
		})
	}
}

func TestGenerateEOS(t *testing.T) {
	// A copy of switch-tiny whose EOS is 501, the second token row 0 generates: generation must
	// stop right after it (EOS included) unless --ignore-eos.
	src := filepath.Join("..", "..", "testdata", "switch-tiny")
	dir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte(`"eos_token_id": 1,`), []byte(`"eos_token_id": 501,`), 1)
	weights, err := os.ReadFile(filepath.Join(src, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"config.json": cfg, "model.safetensors": weights} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		flags []string
		want  string
	}{
		{nil, "208 501"},
		{[]string{"--ignore-eos"}, "208 501 363"},
	}
	for _, tt := range tests {
		args := append([]string{"generate", "--model", dir, "--prompt-ids", "335 150 293 221 369 468 288 197 334 123 40 241", "--max-new-tokens", "3", "-o", "text"}, tt.flags...)
		stdout, _, err := runCmd(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(stdout); got != tt.want {
			t.Fatalf("%v: output %q, want %q", tt.flags, got, tt.want)
		}
	}
}

func TestGenerateErrors(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "mixtral-tiny")
	tests := []struct {
		name string
		give []string
		want string
	}{
		{"no model", []string{"generate", "--prompt-ids", "1 2"}, `"model" not set`},
		{"missing dir", []string{"generate", "--model", filepath.Join(t.TempDir(), "nope"), "--prompt-ids", "1 2"}, "config.json"},
		{"bad id", []string{"generate", "--model", dir, "--prompt-ids", "1 x 2"}, `bad token id "x"`},
		{"id out of range", []string{"generate", "--model", dir, "--prompt-ids", "1 99999"}, "token id 99999 out of range"},
		{"no prompt", []string{"generate", "--model", dir}, "no --prompt-ids"},
		{"bad output", []string{"generate", "--model", dir, "--prompt-ids", "1", "-o", "yaml"}, `-o "yaml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCmd(t, tt.give...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestSynthThenGenerate(t *testing.T) {
	tests := []struct {
		give []string
	}{
		{[]string{"--arch", "switch", "--preset", "switch-tiny", "--pre-gates"}},
		{[]string{"--arch", "mixtral", "--preset", "mixtral-8x7b", "--layers", "2", "--d-model", "64", "--d-ff", "96", "--heads", "8", "--vocab", "300", "--dtype", "bf16"}},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		if _, stderr, err := runCmd(t, append([]string{"synth", "--out", dir, "--seed", "7"}, tt.give...)...); err != nil {
			t.Fatalf("synth %v: %v (%s)", tt.give, err, stderr)
		}
		stdout, _, err := runCmd(t, "generate", "--model", dir, "--prompt-ids", "5 6 7 8", "--max-new-tokens", "5", "--ignore-eos", "-o", "json")
		if err != nil {
			t.Fatalf("generate on synth %v: %v", tt.give, err)
		}
		var out generateOutput
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.Results) != 1 || len(out.Results[0].GeneratedIDs) != 5 {
			t.Fatalf("synth %v: generated %+v, want 5 tokens", tt.give, out.Results)
		}
	}
	if _, _, err := runCmd(t, "synth", "--arch", "switch", "--preset", "nope", "--out", t.TempDir()); err == nil || !strings.Contains(err.Error(), `unknown preset "nope"`) {
		t.Fatalf("unknown preset: error %v", err)
	}
}

// TestGenerateText: with a tokenizer in the checkpoint (pregate synth --tokenizer), prompts may be
// text and the output is the decoded completion.
func TestGenerateText(t *testing.T) {
	dir := t.TempDir()
	tokDir := filepath.Join("..", "..", "model", "tokenizer", "testdata", "unigram")
	if _, _, err := runCmd(t, "synth", "--arch", "mixtral", "--preset", "mixtral-tiny", "--layers", "1", "--experts", "2",
		"--d-model", "32", "--d-ff", "64", "--heads", "4", "--tokenizer", tokDir, "--out", dir); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runCmd(t, "generate", "--model", dir, "--prompt", "Hello world", "--prompt-ids", "1 5 9",
		"--max-new-tokens", "5", "--ignore-eos", "--threads", "2", "-o", "json")
	if err != nil {
		t.Fatalf("generate: %v (stderr %q)", err, stderr)
	}
	var out generateOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out.Results) != 2 {
		t.Fatalf("output %v: %s", err, stdout)
	}
	// "Hello world" with the unigram test model: <s>, then its pieces.
	if r := out.Results[1]; r.PromptIDs[0] != 1 || len(r.PromptIDs) < 3 || len(r.GeneratedIDs) != 5 || r.Text == "" {
		t.Errorf("text prompt result %+v", r)
	}
	if _, _, err := runCmd(t, "generate", "--model", filepath.Join("..", "..", "testdata", "switch-tiny"), "--prompt", "hi"); err == nil ||
		!strings.Contains(err.Error(), "needs the checkpoint's tokenizer") {
		t.Errorf("--prompt without a tokenizer: %v", err)
	}
}
