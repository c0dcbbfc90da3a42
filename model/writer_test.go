package model

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriterRoundTripAllDTypes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tensors := []TensorInfo{
		{Name: "u8", DType: U8, Shape: []int{3}}, // odd size first: the writer keeps declaration order, so f32 lands unaligned
		{Name: "f32", DType: F32, Shape: []int{2, 3}},
		{Name: "f16", DType: F16, Shape: []int{5}},
		{Name: "bf16", DType: BF16, Shape: []int{1, 4}},
		{Name: "e4m3", DType: F8E4M3, Shape: []int{7}},
		{Name: "e5m2", DType: F8E5M2, Shape: []int{2}},
		{Name: "i64", DType: I64, Shape: []int{2}},
		{Name: "i32", DType: I32, Shape: []int{3, 1}},
		{Name: "empty", DType: F32, Shape: []int{0, 4}},
		{Name: "scalar <&>", DType: F32, Shape: []int{}},
	}
	data := make([][]byte, len(tensors))
	for i, ti := range tensors {
		data[i] = make([]byte, ti.NumBytes())
		for j := range data[i] {
			data[i][j] = byte(rng.Uint32())
		}
	}
	meta := map[string]string{"format": "pt", "note": `quotes " and \ backslash`}
	path := filepath.Join(t.TempDir(), "rt.safetensors")
	if err := WriteSafetensors(path, tensors, data, meta); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(raw); n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
	f, err := OpenSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, want := range tensors {
		got, ok := f.Info(want.Name)
		if !ok {
			t.Errorf("tensor %q missing", want.Name)
			continue
		}
		if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || got.File != path {
			t.Errorf("Info(%q) = %+v, want %+v", want.Name, got, want)
		}
		b, err := f.Bytes(want.Name)
		if err != nil || !bytes.Equal(b, data[i]) {
			t.Errorf("Bytes(%q) = % x, %v; want % x", want.Name, b, err, data[i])
		}
	}
	if got := f.Metadata(); got["note"] != meta["note"] || got["format"] != "pt" || len(got) != 2 {
		t.Errorf("Metadata() = %v, want %v", got, meta)
	}
}

func TestWriterStreaming(t *testing.T) {
	tensors := []TensorInfo{{Name: "a", DType: F32, Shape: []int{4}}, {Name: "b", DType: U8, Shape: []int{3}}}
	tests := []struct {
		name      string
		writes    [][]byte
		wantWrite error // error from the last Write
		wantClose []string
	}{
		{name: "exact in odd chunks", writes: [][]byte{make([]byte, 5), make([]byte, 0), make([]byte, 14)}},
		{name: "too few bytes", writes: [][]byte{make([]byte, 18)}, wantClose: []string{"18 bytes of tensor data written, 19 declared"}},
		{name: "too many bytes", writes: [][]byte{make([]byte, 20)}, wantWrite: ErrWrite, wantClose: []string{"more bytes written than the 19 declared"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.safetensors")
			w, err := CreateSafetensors(path, tensors, nil)
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			for _, p := range tt.writes {
				_, werr = w.Write(p)
			}
			if !errorsIs(werr, tt.wantWrite) {
				t.Errorf("Write error = %v, want %v", werr, tt.wantWrite)
			}
			cerr := w.Close()
			if len(tt.wantClose) == 0 {
				if cerr != nil {
					t.Fatalf("Close() = %v", cerr)
				}
				f, err := OpenSafetensors(path)
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
				return
			}
			if !errorsIs(cerr, ErrWrite) || !contains(cerr, append(tt.wantClose, path)...) {
				t.Errorf("Close() = %v, want ErrWrite containing %q", cerr, tt.wantClose)
			}
			for _, p := range []string{path, path + ".tmp"} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("%s exists after a failed Close", p)
				}
			}
			if err := w.Close(); err == nil {
				t.Errorf("second Close() = nil after a failed one")
			}
		})
	}
}

func TestCreateSafetensorsRejects(t *testing.T) {
	tests := []struct {
		name string
		give []TensorInfo
		want string
	}{
		{"duplicate", []TensorInfo{{Name: "a", DType: U8, Shape: []int{1}}, {Name: "a", DType: U8, Shape: []int{1}}}, `tensor "a" declared twice`},
		{"unknown dtype", []TensorInfo{{Name: "a", DType: "F64", Shape: []int{1}}}, `unknown dtype "F64"`},
		{"negative dim", []TensorInfo{{Name: "a", DType: U8, Shape: []int{-2}}}, `tensor "a": shape [-2]`},
		{"empty name", []TensorInfo{{Name: "", DType: U8, Shape: []int{1}}}, "empty name"},
		{"reserved name", []TensorInfo{{Name: "__metadata__", DType: U8, Shape: []int{1}}}, "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.safetensors")
			w, err := CreateSafetensors(path, tt.give, nil)
			if err == nil {
				w.Close()
				t.Fatal("CreateSafetensors succeeded")
			}
			if !errorsIs(err, ErrWrite) || !contains(err, tt.want, path) {
				t.Errorf("error = %v, want it to contain %q and the path", err, tt.want)
			}
		})
	}
	err := WriteSafetensors(filepath.Join(t.TempDir(), "x.safetensors"),
		[]TensorInfo{{Name: "a", DType: F32, Shape: []int{2}}}, [][]byte{make([]byte, 4)}, nil)
	if !errorsIs(err, ErrWrite) || !contains(err, `tensor "a": 4 bytes given`, "needs 8") {
		t.Errorf("WriteSafetensors with short data: %v", err)
	}
}
