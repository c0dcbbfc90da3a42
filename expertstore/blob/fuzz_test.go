package blob

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// maxFuzzRaw bounds what a fuzzed frame may make us allocate (a few KB of frame may claim tens
// of MB, and the fuzzer runs each input thousands of times while minimizing).
const maxFuzzRaw = 1 << 20

// FuzzParse checks that Parse never panics, returns only ErrCorrupt errors, and that whatever it
// accepts is a consistent blob: every tensor viewable, aligned, and Build of the parsed tensors
// gives a blob that parses to the same tensors.
func FuzzParse(f *testing.F) {
	for _, b := range parseSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, data, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if (len(b)-len(data))%Alignment != 0 {
			t.Fatalf("data section at %d", len(b)-len(data))
		}
		ts := make([]Tensor, len(h.Tensors))
		for i, ti := range h.Tensors {
			view, info, err := h.Tensor(data, ti.Name)
			if err != nil || info.Offset%Alignment != 0 || int64(len(view)) != info.Size {
				t.Fatalf("tensor %q: %+v, %d bytes, %v", ti.Name, info, len(view), err)
			}
			ts[i] = Tensor{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Data: view}
		}
		b2, err := Build(h, ts)
		if err != nil {
			t.Fatalf("Build of a parsed blob: %v", err)
		}
		h2, data2, err := Parse(b2)
		if err != nil || len(h2.Tensors) != len(ts) {
			t.Fatalf("Parse of a rebuilt blob: %v", err)
		}
		for _, tt := range ts {
			view, _, err := h2.Tensor(data2, tt.Name)
			if err != nil || !bytes.Equal(view, tt.Data) {
				t.Fatalf("rebuilt tensor %q differs (%v)", tt.Name, err)
			}
		}
	})
}

// FuzzDecompress checks that a frame either decodes or gives ErrCorrupt, never a panic or a hang,
// with and without the checksums (without them the damage reaches the table checks and the huff0
// and zstd decoders), and that what decodes re-compresses to the same bytes.
func FuzzDecompress(f *testing.F) {
	for _, b := range decompressSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		n, err := DecompressedSize(frame)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecompressedSize error %v does not wrap ErrCorrupt", err)
			}
		} else if n <= maxFuzzRaw {
			dst := make([]byte, n)
			if err := Decompress(dst, frame); err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Decompress error %v does not wrap ErrCorrupt", err)
				}
			} else if c, ok := Compress(dst, int(frame[16]), -1); ok {
				back := make([]byte, n)
				if err := Decompress(back, c); err != nil || !bytes.Equal(back, dst) {
					t.Fatalf("re-compressed output does not round-trip: %v", err)
				}
			}
		}
		if fi, err := parseFrame(frame, false); err == nil && fi.rawSize <= maxFuzzRaw {
			_ = decompress(make([]byte, fi.rawSize), frame, 2, false)
		}
	})
}

// FuzzCompress checks the round trip of arbitrary bytes at every element size.
func FuzzCompress(f *testing.F) {
	f.Add(weights("BF16", 150, 0.02, 1), uint8(2))
	f.Add(make([]byte, 300), uint8(4))
	f.Add([]byte("abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc"), uint8(1))
	f.Fuzz(func(t *testing.T, raw []byte, es uint8) {
		frame, err := compress(raw, int(es), minSegElems, 2)
		if err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, len(raw))
		if err := Decompress(dst, frame); err != nil || !bytes.Equal(dst, raw) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func parseSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	for i, dt := range allDTypes {
		b, err := Build(Header{Kind: KindExpert, Model: "seed", Block: i, Expert: 1}, testTensors(dt, uint64(i))[1:3])
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	dense, err := Build(Header{Kind: KindDense, Block: -1, Expert: -1}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return append(seeds, dense)
}

// decompressSeeds are small frames (the fuzzer minimizes every new input it finds, in time that
// grows with its size) that reach every method, the rotation, a tail and several segments.
func decompressSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	add := func(raw []byte, es, seg int) {
		frame, err := compress(raw, es, seg, 1)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, frame)
	}
	add(weights("BF16", 300, 0.02, 1), 2, 256)
	add(append(weights("F32", 150, 0.02, 2), 7), 4, 128)
	add(make([]byte, 300), 1, 64)
	add(bytes.Repeat([]byte("pregate blob "), 30), 1, 256)
	add(randomBytes(100, 3), 2, 64)
	_, frame := mixedFrame(tb, 128)
	return append(seeds, frame)
}

// TestWriteFuzzCorpus writes the seeds to testdata/fuzz when PREGATE_WRITE_FUZZ_CORPUS=1, so that
// the corpus follows format changes: PREGATE_WRITE_FUZZ_CORPUS=1 go test ./expertstore/blob -run TestWriteFuzzCorpus
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("PREGATE_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set PREGATE_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	for name, seeds := range map[string][][]byte{"FuzzParse": parseSeeds(t), "FuzzDecompress": decompressSeeds(t)} {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
