package model

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseConfig parses any config.json: a validated Config or an error wrapping ErrConfig or
// ErrUnsupported, never a panic. Seeds: the fixtures' configs.
func FuzzParseConfig(f *testing.F) {
	for _, dir := range []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"} {
		b, err := os.ReadFile(filepath.Join("..", "testdata", dir, "config.json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"model_type":"mixtral","num_local_experts":-1}`))
	f.Add([]byte(`{"model_type":"switch_transformers","num_experts":0,"d_model":1e20}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err != nil {
			if !errors.Is(err, ErrConfig) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v wraps neither ErrConfig nor ErrUnsupported", err)
			}
			return
		}
		if cfg == nil || cfg.ModelType == "" {
			t.Fatalf("accepted %s as %+v", b, cfg)
		}
	})
}
