//go:build !cuda

package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A default build answers --device cuda on every command that takes it with errNoCUDA, before
// doing anything else (no cluster started, no model read).
func TestDeviceCUDAWithoutCUDABuild(t *testing.T) {
	model := filepath.Join("..", "..", "testdata", "switch-tiny")
	tests := [][]string{
		{"generate", "--model", model, "--prompt-ids", "1 2 3", "--device", "cuda"},
		{"generate", "--model", model, "--prompt-ids", "1 2 3", "--device", "cuda:1"},
		{"worker", "--model", "m", "--etcd-endpoints", "127.0.0.1:1", "--no-gossip", "--device", "cuda"},
		{"up", "--model", model, "--data-dir", t.TempDir(), "--device", "cuda:0"},
		{"bench", "--preset", "switch-base-8", "--device", "cuda"},
	}
	for _, args := range tests {
		_, _, err := runCmd(t, args...)
		if !errors.Is(err, errNoCUDA) || !strings.Contains(err.Error(), "make build-cuda") {
			t.Errorf("pregate %s: %v, want %v", strings.Join(args, " "), err, errNoCUDA)
		}
	}
	// cpu still works, and a bad device is named.
	if _, _, err := runCmd(t, "generate", "--model", model, "--prompt-ids", "1 2 3", "--max-new-tokens", "1", "--device", "cpu"); err != nil {
		t.Errorf("--device cpu: %v", err)
	}
	if _, _, err := runCmd(t, "generate", "--model", model, "--prompt-ids", "1", "--device", "tpu"); err == nil || !strings.Contains(err.Error(), `"tpu"`) {
		t.Errorf("--device tpu: %v", err)
	}
}
