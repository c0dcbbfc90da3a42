package engine

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pregate/pregate/model"
)

// TestRelativeBiasOutOfReachIsRefused: a config whose max distance does not pass the exact buckets
// (so no clamped bias table describes it) is refused at load with ErrUnsupported, not run with a
// bias that HF would not compute, and the weights already made on the backend are freed.
func TestRelativeBiasOutOfReachIsRefused(t *testing.T) {
	src := filepath.Join("..", "testdata", "switch-tiny")
	cfg, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(cfg, []byte(`"relative_attention_max_distance": 128`), []byte(`"relative_attention_max_distance": 4`), 1)
	if bytes.Equal(bad, cfg) {
		t.Fatal("switch-tiny's config has no relative_attention_max_distance of 128 to change")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(mustAbs(t, src), "model.safetensors"), filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	be := newCountingBackend(t)
	if _, err := Load(ckpt, be, Options{}); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "relative_attention_max_distance 4") {
		t.Errorf("Load: %v, want ErrUnsupported naming relative_attention_max_distance 4", err)
	}
	if len(be.live) != 0 || be.allocs == 0 || len(be.bad) != 0 {
		t.Errorf("the failed Load left %d of the %d weights it made on the backend (%v)", len(be.live), be.allocs, be.bad)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
