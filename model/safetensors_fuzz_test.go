package model

import (
	"slices"
	"testing"
)

// FuzzParseHeader checks that ParseHeader never panics and that whatever it accepts obeys the
// format's invariants: known dtypes, sizes matching shapes, offsets tiling [0, dataSize) in order.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}`), int64(8))
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), int64(8))
	f.Add([]byte(`{}`), int64(0))
	f.Add([]byte(`{"x":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}}`), int64(3))
	f.Fuzz(func(t *testing.T, header []byte, dataSize int64) {
		tensors, offsets, meta, err := ParseHeader(header, dataSize)
		if err != nil {
			if !errorsIs(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if meta == nil || len(tensors) != len(offsets) {
			t.Fatalf("meta nil or %d tensors vs %d offsets", len(tensors), len(offsets))
		}
		var pos int64
		seen := map[string]bool{}
		for i, ti := range tensors {
			if seen[ti.Name] || ti.Name == "" || ti.Name == metadataKey {
				t.Fatalf("bad or duplicate name %q", ti.Name)
			}
			seen[ti.Name] = true
			if ti.DType.Size() == 0 {
				t.Fatalf("tensor %q has unknown dtype %q", ti.Name, ti.DType)
			}
			o := offsets[i]
			if o[0] != pos || o[1] < o[0] {
				t.Fatalf("tensor %q offsets %v, expected begin %d", ti.Name, o, pos)
			}
			n, ok := shapeBytes(ti.Shape, ti.DType)
			if !ok || n != o[1]-o[0] || n != ti.NumBytes() {
				t.Fatalf("tensor %q: %d bytes for shape %v %s (ok=%v), offsets %v", ti.Name, n, ti.Shape, ti.DType, ok, o)
			}
			pos = o[1]
		}
		if pos != dataSize {
			t.Fatalf("tensors end at %d, dataSize %d", pos, dataSize)
		}
		if !slices.IsSortedFunc(offsets, func(a, b [2]int64) int { return cmpInt64(a[0], b[0]) }) {
			t.Fatalf("offsets not sorted: %v", offsets)
		}
	})
}
