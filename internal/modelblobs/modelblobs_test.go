package modelblobs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/routing"
)

func split(t *testing.T, dir string, maxDense int64) []Blob {
	t.Helper()
	ckpt, err := model.OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ckpt.Close() })
	var out []Blob
	if err := Split(ckpt, "m", maxDense, func(b Blob) error {
		out = append(out, Blob{Expert: b.Expert, Dense: b.Dense, Header: b.Header, Data: bytes.Clone(b.Data), Digest: b.Digest})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSplitCoversEveryTensorOnce(t *testing.T) {
	tests := []struct {
		fixture     string
		experts     int
		perExpert   int
		maxDense    int64
		wantDenseGE int
	}{
		{"switch-tiny", 4 * 8, 2, DefaultMaxDense, 1},
		{"switch-tiny-pregated", 4 * 8, 2, 64 << 10, 4},
		{"mixtral-tiny", 4 * 8, 3, 256 << 10, 2},
	}
	for _, tt := range tests {
		dir := filepath.Join("..", "..", "testdata", tt.fixture)
		ckpt, err := model.OpenCheckpoint(dir)
		if err != nil {
			t.Fatal(err)
		}
		blobs := split(t, dir, tt.maxDense)
		seen := map[string]int{}
		experts, dense := 0, 0
		for _, b := range blobs {
			if b.Digest != blob.Sum(b.Data) {
				t.Fatalf("%s: %s digest mismatch", tt.fixture, b)
			}
			h, data, err := blob.Parse(b.Data)
			if err != nil {
				t.Fatal(err)
			}
			switch h.Kind {
			case blob.KindExpert:
				experts++
				if len(h.Tensors) != tt.perExpert || b.Dense != "" || b.Expert != (routing.ExpertKey{Block: h.Block, Expert: h.Expert}) {
					t.Fatalf("%s: expert blob %s has %d tensors, header %d/%d", tt.fixture, b, len(h.Tensors), h.Block, h.Expert)
				}
			case blob.KindDense:
				dense++
			}
			for _, ti := range h.Tensors {
				seen[ti.Name]++
				got, _, err := h.Tensor(data, ti.Name)
				if err != nil {
					t.Fatal(err)
				}
				want, _, err := ckpt.Bytes(ti.Name)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s: %s in %s differs from the checkpoint (%v)", tt.fixture, ti.Name, b, err)
				}
			}
		}
		if experts != tt.experts || dense < tt.wantDenseGE {
			t.Fatalf("%s: %d expert and %d dense blobs, want %d and ≥ %d", tt.fixture, experts, dense, tt.experts, tt.wantDenseGE)
		}
		for _, name := range ckpt.Names() {
			if seen[name] != 1 {
				t.Fatalf("%s: tensor %s is in %d blobs, want 1", tt.fixture, name, seen[name])
			}
		}
		ckpt.Close()
	}
}

func TestSplitIsDeterministic(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "mixtral-tiny")
	a, b := split(t, dir, 0), split(t, dir, 0)
	if len(a) != len(b) {
		t.Fatalf("%d vs %d blobs", len(a), len(b))
	}
	for i := range a {
		if a[i].String() != b[i].String() || a[i].Digest != b[i].Digest {
			t.Fatalf("blob %d: %s %s vs %s %s", i, a[i], a[i].Digest, b[i], b[i].Digest)
		}
	}
}

// A checkpoint with tokenizer files: one more dense blob, last, holds them byte for byte.
func TestSplitCarriesTheTokenizer(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join("..", "..", "testdata", "switch-tiny")
	for _, f := range []struct{ from, name string }{
		{filepath.Join(src, "config.json"), "config.json"},
		{filepath.Join(src, "model.safetensors"), "model.safetensors"},
		{filepath.Join("..", "..", "model", "tokenizer", "testdata", "unigram", "spiece.model"), "spiece.model"},
	} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := []byte(`{"eos_token": "</s>", "chat_template": "{{ messages }}"}`)
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	without := split(t, src, 0)
	with := split(t, dir, 0)
	if len(with) != len(without)+1 {
		t.Fatalf("%d blobs with the tokenizer, %d without", len(with), len(without))
	}
	last := with[len(with)-1]
	h, data, err := blob.Parse(last.Data)
	if err != nil {
		t.Fatal(err)
	}
	if last.Dense == "" || h.Kind != blob.KindDense || len(h.Tensors) != 2 {
		t.Fatalf("tokenizer blob %s: kind %v, %d tensors", last, h.Kind, len(h.Tensors))
	}
	for name, want := range map[string][]byte{"spiece.model": nil, "tokenizer_config.json": cfg} {
		if want == nil {
			want, _ = os.ReadFile(filepath.Join(dir, name))
		}
		got, info, err := h.Tensor(data, tokenizer.BlobPrefix+name)
		if err != nil || !bytes.Equal(got, want) || info.DType != "U8" {
			t.Errorf("%s: %d bytes, dtype %s, err %v; want the file's %d bytes", name, len(got), info.DType, err, len(want))
		}
	}
}
