//go:build cuda

package cuda

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/model"
)

// TestEngineOnDevice runs the engine's forward passes on the device's backend and on the CPU
// backend, over the tiny golden checkpoints (Switch with T5 attention and relative bias, its
// pre-gated variant, Mixtral with GQA, RoPE and SwiGLU experts): the greedy tokens must be the
// same and the first step's logits within 1e-3 (the engine's golden tests hold the CPU backend to
// HF's outputs).
func TestEngineOnDevice(t *testing.T) {
	d := device(t)
	cpu := compute.NewCPU(2)
	defer cpu.Close()
	prompts := [][]int{{3, 17, 5, 9, 12, 250, 7}, {4, 8}, {100, 101, 102}}
	for _, name := range []string{"switch-tiny", "switch-tiny-pregated", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			ckpt, err := model.OpenCheckpoint(filepath.Join("..", "testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			defer ckpt.Close()
			load := func(be compute.Backend) engine.Model {
				m, err := engine.Load(ckpt, be, engine.Options{})
				if err != nil {
					t.Fatalf("Load on %s: %v", be.Name(), err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			onCPU, onDev := load(cpu), load(d.Backend())
			ctx := context.Background()

			// The first step's logits.
			first := func(m engine.Model) [][]float32 {
				seqs, err := m.Start(ctx, prompts)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					for _, s := range seqs {
						s.Close()
					}
				}()
				logits, err := m.Step(ctx, seqs, false)
				if err != nil {
					t.Fatal(err)
				}
				return logits
			}
			want, got := first(onCPU), first(onDev)
			for i := range want {
				for j := range want[i] {
					if math.Abs(float64(got[i][j]-want[i][j])) > 1e-3 {
						t.Fatalf("sequence %d logit %d: %v on the device, %v on the CPU", i, j, got[i][j], want[i][j])
					}
				}
			}

			opts := engine.GenerateOptions{MaxNewTokens: 8, IgnoreEOS: true}
			wantRes, _, err := engine.Generate(ctx, onCPU, prompts, opts)
			if err != nil {
				t.Fatal(err)
			}
			gotRes, _, err := engine.Generate(ctx, onDev, prompts, opts)
			if err != nil {
				t.Fatal(err)
			}
			for i := range wantRes {
				if !slices.Equal(gotRes[i].GeneratedIDs, wantRes[i].GeneratedIDs) {
					t.Errorf("sequence %d: %v on the device, %v on the CPU", i, gotRes[i].GeneratedIDs, wantRes[i].GeneratedIDs)
				}
			}
		})
	}
}
