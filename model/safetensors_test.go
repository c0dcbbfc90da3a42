package model

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// rawFile writes an 8-byte length (headerLen, or len(header) when negative), header and data.
func rawFile(t *testing.T, header string, headerLen int64, data []byte) string {
	t.Helper()
	if headerLen < 0 {
		headerLen = int64(len(header))
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(headerLen))
	b = append(b, header...)
	b = append(b, data...)
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenSafetensorsRejectsBadFiles(t *testing.T) {
	const ab = `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}`
	tests := []struct {
		name      string
		give      string // header
		headerLen int64  // -1: len(give)
		data      int    // data bytes
		raw       []byte // whole file instead of give/data when non-nil
		want      []string
	}{
		{name: "truncated", give: ab, headerLen: -1, data: 15,
			want: []string{"file is truncated: header says data is 20 bytes, file has 15"}},
		{name: "trailing garbage", give: ab, headerLen: -1, data: 24,
			want: []string{"trailing data", "20 bytes", "24"}},
		{name: "header length beyond file", give: ab, headerLen: 5000, data: 20,
			want: []string{"header length 5000 is beyond the end of the file"}},
		{name: "header length over limit", give: ab, headerLen: 200_000_000, data: 20,
			want: []string{"header length 200000000 exceeds the limit"}},
		{name: "file shorter than length field", raw: []byte{1, 2, 3},
			want: []string{"file is 3 bytes, too short"}},
		{name: "size lie", give: `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, headerLen: -1, data: 8,
			want: []string{`tensor "a"`, "span 8 bytes", "shape [3] of F32 needs 12"}},
		{name: "overlap", give: `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, headerLen: -1, data: 12,
			want: []string{`tensor "b"`, "overlap", `tensor "a"`}},
		{name: "gap", give: `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}`, headerLen: -1, data: 20,
			want: []string{"gap in data", "[8, 12)", `"a"`, `"b"`}},
		{name: "gap at start", give: `{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, headerLen: -1, data: 4,
			want: []string{"gap in data", "[0, 2)"}},
		{name: "unknown dtype", give: `{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}`, headerLen: -1, data: 8,
			want: []string{`tensor "w"`, `unknown dtype "F64"`}},
		{name: "bad json", give: `{"a":{"dtype":"F32",`, headerLen: -1, data: 0,
			want: []string{`tensor "a"`, "invalid header JSON"}},
		{name: "not an object", give: `[1, 2]`, headerLen: -1, data: 0,
			want: []string{"not a JSON object"}},
		{name: "duplicate key", give: `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, headerLen: -1, data: 2,
			want: []string{`duplicate key "a"`}},
		{name: "duplicate field", give: `{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, headerLen: -1, data: 1,
			want: []string{`tensor "a"`, `duplicate key "dtype"`}},
		{name: "duplicate metadata key", give: `{"__metadata__":{"k":"1","k":"2"}}`, headerLen: -1, data: 0,
			want: []string{"__metadata__", `duplicate key "k"`}},
		{name: "metadata not strings", give: `{"__metadata__":{"k":1}}`, headerLen: -1, data: 0,
			want: []string{"__metadata__", `key "k"`, "want a string"}},
		{name: "invalid utf8", give: "{\"\xff\":{}}", headerLen: -1, data: 0,
			want: []string{"not valid UTF-8"}},
		{name: "negative dim", give: `{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, headerLen: -1, data: 0,
			want: []string{`tensor "a"`, "shape", "-1"}},
		{name: "fractional dim", give: `{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}`, headerLen: -1, data: 1,
			want: []string{`tensor "a"`, "shape", "1.5"}},
		{name: "missing offsets", give: `{"a":{"dtype":"U8","shape":[1]}}`, headerLen: -1, data: 1,
			want: []string{`tensor "a"`, `missing "data_offsets"`}},
		{name: "unknown field", give: `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}`, headerLen: -1, data: 1,
			want: []string{`tensor "a"`, `unknown field "x"`}},
		{name: "begin after end", give: `{"a":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}}`, headerLen: -1, data: 2,
			want: []string{`tensor "a"`, "begin > end"}},
		{name: "three offsets", give: `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, headerLen: -1, data: 1,
			want: []string{`tensor "a"`, "3 values"}},
		{name: "shape overflow", give: `{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}`, headerLen: -1, data: 16,
			want: []string{`tensor "a"`, "overflows"}},
		{name: "second object", give: `{} {}`, headerLen: -1, data: 0,
			want: []string{"after the object"}},
		{name: "empty name", give: `{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, headerLen: -1, data: 1,
			want: []string{"empty name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.raw != nil {
				path = filepath.Join(t.TempDir(), "x.safetensors")
				if err := os.WriteFile(path, tt.raw, 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				path = rawFile(t, tt.give, tt.headerLen, make([]byte, tt.data))
			}
			f, err := OpenSafetensors(path)
			if err == nil {
				f.Close()
				t.Fatalf("OpenSafetensors succeeded, want error containing %q", tt.want)
			}
			if !errorsIs(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !contains(err, append([]string{path}, tt.want...)...) {
				t.Errorf("error = %q\nwant it to name the path and contain %q", err, tt.want)
			}
		})
	}
}

func TestOpenSafetensorsAccepts(t *testing.T) {
	tests := []struct {
		name      string
		give      string
		data      int
		wantNames []string
		wantMeta  map[string]string
	}{
		{name: "no tensors", give: `{}`, wantNames: nil, wantMeta: map[string]string{}},
		{name: "null metadata", give: `{"__metadata__":null}`, wantMeta: map[string]string{}},
		{name: "empty and scalar tensors", give: `{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}}   `,
			data: 4, wantNames: []string{"s", "z"}, wantMeta: map[string]string{"format": "pt"}},
		{name: "offsets out of name order", give: "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\n \"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[1,9]}}",
			data: 9, wantNames: []string{"a", "b"}, wantMeta: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := OpenSafetensors(rawFile(t, tt.give, -1, make([]byte, tt.data)))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := f.Names(); !slices.Equal(got, tt.wantNames) {
				t.Errorf("Names() = %q, want %q", got, tt.wantNames)
			}
			meta := f.Metadata()
			if len(meta) != len(tt.wantMeta) {
				t.Errorf("Metadata() = %v, want %v", meta, tt.wantMeta)
			}
			for k, v := range tt.wantMeta {
				if meta[k] != v {
					t.Errorf("Metadata()[%q] = %q, want %q", k, meta[k], v)
				}
			}
			for _, n := range tt.wantNames {
				info, _ := f.Info(n)
				b, err := f.Bytes(n)
				if err != nil || int64(len(b)) != info.NumBytes() {
					t.Errorf("Bytes(%q) = %d bytes, %v; want %d", n, len(b), err, info.NumBytes())
				}
			}
		})
	}
}

func TestSafetensorsFileClose(t *testing.T) {
	f, err := OpenSafetensors(rawFile(t, `{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, -1, []byte{7, 9}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Bytes("a")
	if err != nil || string(b) != "\x07\x09" {
		t.Fatalf("Bytes = %v, %v", b, err)
	}
	if _, err := f.Bytes("nope"); !errorsIs(err, ErrTensorNotFound) || !contains(err, `"nope"`, f.Path()) {
		t.Errorf("Bytes(nope) error = %v", err)
	}
	for range 2 {
		if err := f.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}
	if _, err := f.Bytes("a"); !errorsIs(err, ErrClosed) {
		t.Errorf("Bytes after Close error = %v, want ErrClosed", err)
	}
}

func TestParseHeaderOrderAndOffsets(t *testing.T) {
	h := `{"c":{"dtype":"U8","shape":[3],"data_offsets":[5,8]},"a":{"dtype":"U8","shape":[5],"data_offsets":[0,5]},"e":{"dtype":"U8","shape":[0],"data_offsets":[5,5]}}`
	tensors, offsets, meta, err := ParseHeader([]byte(h), 8)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ti := range tensors {
		names = append(names, ti.Name)
	}
	if want := []string{"a", "e", "c"}; !slices.Equal(names, want) {
		t.Errorf("order = %q, want %q", names, want)
	}
	if want := [][2]int64{{0, 5}, {5, 5}, {5, 8}}; !slices.Equal(offsets, want) {
		t.Errorf("offsets = %v, want %v", offsets, want)
	}
	if meta == nil {
		t.Errorf("meta is nil")
	}
	if _, _, _, err := ParseHeader([]byte(h), 9); !errorsIs(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing data") {
		t.Errorf("ParseHeader with dataSize 9: %v", err)
	}
}
