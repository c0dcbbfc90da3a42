package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pregate/pregate/model"
)

// roundedCopies writes two copies of a fixture whose float weights are rounded to bfloat16: one
// stored as BF16, one as F32 holding the same values. They define the same model, so the BF16
// GEMM path must reproduce the F32 one.
func roundedCopies(t *testing.T, name string) (bf16Dir, f32Dir string) {
	t.Helper()
	src := filepath.Join("..", "testdata", name)
	ckpt, err := model.OpenCheckpoint(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	cfg, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	bf16Dir, f32Dir = t.TempDir(), t.TempDir()
	var infos16, infos32 []model.TensorInfo
	var data16, data32 [][]byte
	for _, n := range ckpt.Names() {
		v, err := ckpt.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := ckpt.Info(n)
		b16 := make([]byte, 2*len(v))
		b32 := make([]byte, 4*len(v))
		for i, x := range v {
			h := model.Float32ToBF16(x)
			b16[2*i], b16[2*i+1] = byte(h), byte(h>>8)
			r := model.BF16ToFloat32(h)
			copy(b32[4*i:], le32(r))
		}
		infos16 = append(infos16, model.TensorInfo{Name: n, DType: model.BF16, Shape: info.Shape})
		infos32 = append(infos32, model.TensorInfo{Name: n, DType: model.F32, Shape: info.Shape})
		data16, data32 = append(data16, b16), append(data32, b32)
	}
	for dir, w := range map[string]struct {
		infos []model.TensorInfo
		data  [][]byte
	}{bf16Dir: {infos16, data16}, f32Dir: {infos32, data32}} {
		if err := model.WriteSafetensors(filepath.Join(dir, "model.safetensors"), w.infos, w.data, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return bf16Dir, f32Dir
}

func le32(f float32) []byte {
	var b [4]byte
	u := math.Float32bits(f)
	b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	return b[:]
}

func TestBF16WeightsMatchF32(t *testing.T) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			bf16Dir, f32Dir := roundedCopies(t, name)
			prompts := [][]int{{1, 95, 138, 5, 366, 6, 345}, {1, 349, 143}}
			var logits [2][][]float32
			var gens [2][]Result
			for i, dir := range []string{bf16Dir, f32Dir} {
				ckpt, err := model.OpenCheckpoint(dir)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ckpt.Close() })
				m, err := Load(ckpt, newCPU(t, 2), Options{})
				if err != nil {
					t.Fatal(err)
				}
				seqs, err := m.Start(context.Background(), prompts)
				if err != nil {
					t.Fatal(err)
				}
				if logits[i], err = m.Step(context.Background(), seqs, true); err != nil {
					t.Fatal(err)
				}
				if gens[i], _, err = Generate(context.Background(), m, prompts, GenerateOptions{MaxNewTokens: 8}); err != nil {
					t.Fatal(err)
				}
			}
			assertClose(t, "logits bf16 vs f32", slices.Concat(logits[0]...), slices.Concat(logits[1]...), 1e-5, 1e-5)
			for r := range prompts {
				if !slices.Equal(gens[0][r].GeneratedIDs, gens[1][r].GeneratedIDs) {
					t.Fatalf("row %d: bf16 generated %v, f32 %v", r, gens[0][r].GeneratedIDs, gens[1][r].GeneratedIDs)
				}
			}
		})
	}
}
