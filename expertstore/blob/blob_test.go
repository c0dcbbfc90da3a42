package blob

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

var allDTypes = []string{"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "U8"}

var dtypeSize = map[string]int{"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1}

// testTensors returns tensors of dtype dt with sizes that are not multiples of 64 (so Build must
// pad), a scalar and an empty tensor.
func testTensors(dt string, seed uint64) []Tensor {
	shapes := [][]int{{3, 5}, {7}, {}, {0, 4}, {2, 3, 4}}
	var ts []Tensor
	for i, s := range shapes {
		n := 1
		for _, d := range s {
			n *= d
		}
		ts = append(ts, Tensor{
			Name:  fmt.Sprintf("w%d", i),
			DType: dt,
			Shape: s,
			Data:  randomBytes(n*dtypeSize[dt], seed+uint64(i)),
		})
	}
	return ts
}

func expertHeader() Header { return Header{Kind: KindExpert, Model: "m", Block: 2, Expert: 5} }

func mustBuild(t *testing.T, h Header, ts []Tensor) []byte {
	t.Helper()
	b, err := Build(h, ts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildParseRoundTrip(t *testing.T) {
	for _, dt := range allDTypes {
		t.Run(dt, func(t *testing.T) {
			ts := testTensors(dt, 1)
			b := mustBuild(t, expertHeader(), ts)
			h, data, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if h.Kind != KindExpert || h.Model != "m" || h.Block != 2 || h.Expert != 5 || len(h.Tensors) != len(ts) {
				t.Fatalf("header = %+v", h)
			}
			start := len(b) - len(data)
			if start%Alignment != 0 {
				t.Errorf("data section starts at %d, not 64-aligned", start)
			}
			for i, tt := range ts {
				got, info, err := h.Tensor(data, tt.Name)
				if err != nil {
					t.Fatal(err)
				}
				want := TensorInfo{Name: tt.Name, DType: dt, Shape: tt.Shape, Offset: info.Offset, Size: int64(len(tt.Data))}
				if !reflect.DeepEqual(info, want) || !reflect.DeepEqual(h.Tensors[i], info) {
					t.Errorf("info %d = %+v, want %+v (order kept)", i, info, want)
				}
				if (start+int(info.Offset))%Alignment != 0 {
					t.Errorf("%s at blob offset %d, not 64-aligned", tt.Name, start+int(info.Offset))
				}
				if !bytes.Equal(got, tt.Data) {
					t.Errorf("%s: data differs", tt.Name)
				}
				if len(got) > 0 && uintptr(unsafe.Pointer(&got[0])) != uintptr(unsafe.Pointer(&b[start+int(info.Offset)])) {
					t.Errorf("%s: not a view into the blob", tt.Name)
				}
				if cap(got) != len(got) {
					t.Errorf("%s: cap %d > len %d: an append could overwrite the next tensor", tt.Name, cap(got), len(got))
				}
			}
		})
	}
}

func TestBuildDense(t *testing.T) {
	b := mustBuild(t, Header{Kind: KindDense, Block: -1, Expert: -1}, nil)
	h, data, err := Parse(b)
	if err != nil || h.Kind != KindDense || len(h.Tensors) != 0 || len(data) != 0 {
		t.Fatalf("Parse(empty dense) = %+v, %d bytes, %v", h, len(data), err)
	}
	if len(b)%Alignment != 0 {
		t.Errorf("blob is %d bytes, want a multiple of 64", len(b))
	}
}

func TestBuildErrors(t *testing.T) {
	good := Tensor{Name: "a", DType: "F32", Shape: []int{2}, Data: make([]byte, 8)}
	tests := []struct {
		name    string
		give    Header
		tensors []Tensor
		want    string
	}{
		{"unknown dtype", expertHeader(), []Tensor{{Name: "a", DType: "F64", Shape: []int{1}, Data: make([]byte, 8)}}, `unknown dtype "F64"`},
		{"size mismatch", expertHeader(), []Tensor{{Name: "a", DType: "BF16", Shape: []int{3}, Data: make([]byte, 5)}}, "5 bytes of data, BF16 [3] needs 6"},
		{"negative dim", expertHeader(), []Tensor{{Name: "a", DType: "U8", Shape: []int{-1}}}, "negative dimension"},
		{"overflow", expertHeader(), []Tensor{{Name: "a", DType: "F32", Shape: []int{math.MaxInt, math.MaxInt, 4}}}, "overflows"},
		{"no name", expertHeader(), []Tensor{{DType: "U8", Shape: []int{0}}}, "no name"},
		{"duplicate", expertHeader(), []Tensor{good, good}, `duplicate name "a"`},
		{"kind", Header{Kind: "moe"}, nil, `unknown kind "moe"`},
		{"expert block", Header{Kind: KindExpert, Block: -1}, nil, "block -1"},
		{"dense block", Header{Kind: KindDense, Block: 0, Expert: -1}, nil, "want -1, -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(tt.give, tt.tensors)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

// assemble writes a blob by hand around a header JSON, without any checks.
func assemble(header string, data []byte) []byte {
	start := int(alignUp(int64(prefixSize + len(header))))
	b := make([]byte, start, start+len(data))
	copy(b, Magic)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(header)))
	copy(b[prefixSize:], header)
	return append(b, data...)
}

func TestParseErrors(t *testing.T) {
	const hdr = `{"kind":"expert","block":0,"expert":1,"tensors":[%s]}`
	tensor := func(name, dt, shape string, off, size int64) string {
		return fmt.Sprintf(`{"name":%q,"dtype":%q,"shape":%s,"offset":%d,"size":%d}`, name, dt, shape, off, size)
	}
	good := assemble(fmt.Sprintf(hdr, tensor("a", "F32", "[4]", 0, 16)+","+tensor("b", "U8", "[3]", 64, 3)), make([]byte, 67))
	if _, _, err := Parse(good); err != nil {
		t.Fatalf("hand-made blob: %v", err)
	}
	withLen := func(n uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[8:], n)
		return b
	}
	poke := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		give []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"bad magic", append([]byte("PGBLOB02"), good[8:]...), "bad magic"},
		{"truncated prefix", good[:10], "too short"},
		{"truncated header", good[:40], "truncated"},
		{"truncated data", good[:len(good)-1], "out of bounds"},
		{"trailing data", append(bytes.Clone(good), 0), "data section is 68 bytes, the tensors end at 67"},
		{"header length zero", withLen(0), "header length 0 out of range"},
		{"header length too big", withLen(MaxHeaderSize + 1), "header length 1048577 out of range"},
		{"header length past end", withLen(1 << 19), "truncated"},
		{"bad JSON", assemble(`{"kind":`, nil), "header JSON"},
		{"unknown field", assemble(`{"kind":"dense","block":-1,"expert":-1,"tensors":[],"x":1}`, nil), `unknown field "x"`},
		{"trailing JSON", assemble(`{"kind":"dense","block":-1,"expert":-1,"tensors":[]} {}`, nil), "after the header"},
		{"header padding", poke(prefixSize+len(fmt.Sprintf(hdr, tensor("a", "F32", "[4]", 0, 16)+","+tensor("b", "U8", "[3]", 64, 3))), 1), "padding byte"},
		{"data padding", poke(len(good)-67+20, 1), "padding byte at data offset 20"},
		{"unknown kind", assemble(`{"kind":"x","block":0,"expert":0,"tensors":[]}`, nil), `unknown kind "x"`},
		{"unknown dtype", assemble(fmt.Sprintf(hdr, tensor("a", "F64", "[2]", 0, 16)), make([]byte, 16)), `unknown dtype "F64"`},
		{"size mismatch", assemble(fmt.Sprintf(hdr, tensor("a", "F32", "[2]", 0, 16)), make([]byte, 16)), "size 16, but F32 [2] is 8 bytes"},
		{"negative dim", assemble(fmt.Sprintf(hdr, tensor("a", "F32", "[-2]", 0, -8)), nil), "negative dimension"},
		{"overlap", assemble(fmt.Sprintf(hdr, tensor("a", "F32", "[32]", 0, 128)+","+tensor("b", "U8", "[3]", 64, 3)), make([]byte, 128)), `"b" at [64, 67) overlaps tensor "a" ending at 128`},
		{"out of bounds", assemble(fmt.Sprintf(hdr, tensor("a", "F32", "[4]", 64, 16)), make([]byte, 32)), "out of bounds"},
		{"offset huge", assemble(fmt.Sprintf(hdr, tensor("a", "U8", "[1]", 1<<62, 1)), make([]byte, 32)), "out of bounds"},
		{"misaligned", assemble(fmt.Sprintf(hdr, tensor("a", "U8", "[4]", 4, 4)), make([]byte, 8)), "offset 4 is not"},
		{"negative offset", assemble(fmt.Sprintf(hdr, tensor("a", "U8", "[4]", -64, 4)), make([]byte, 8)), "offset -64"},
		{"duplicate name", assemble(fmt.Sprintf(hdr, tensor("a", "U8", "[4]", 0, 4)+","+tensor("a", "U8", "[4]", 64, 4)), make([]byte, 68)), `duplicate name "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse(tt.give)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error = %v, want ErrCorrupt containing %q", err, tt.want)
			}
		})
	}
}

func TestParseAcceptsAnyTensorOrder(t *testing.T) {
	b := assemble(`{"kind":"dense","block":-1,"expert":-1,"tensors":[`+
		`{"name":"late","dtype":"U8","shape":[2],"offset":64,"size":2},`+
		`{"name":"early","dtype":"U8","shape":[2],"offset":0,"size":2}]}`, append(append([]byte{1, 2}, make([]byte, 62)...), 3, 4))
	h, data, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := h.Tensor(data, "late")
	if err != nil || !bytes.Equal(got, []byte{3, 4}) {
		t.Errorf("late = %v, %v", got, err)
	}
}

func TestTensorLookup(t *testing.T) {
	b := mustBuild(t, expertHeader(), testTensors("BF16", 3))
	h, data, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give    string
		data    []byte
		wantErr error
	}{
		{"w0", data, nil},
		{"w4", data, nil},
		{"nope", data, ErrNotFound},
		{"w4", data[:10], ErrCorrupt}, // a data section that does not match the header
	}
	for _, tt := range tests {
		_, info, err := h.Tensor(tt.data, tt.give)
		if !errors.Is(err, tt.wantErr) || (err == nil && info.Name != tt.give) {
			t.Errorf("Tensor(%q) = %+v, %v; want error %v", tt.give, info, err, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), tt.give) {
			t.Errorf("error %v does not name %q", err, tt.give)
		}
	}
}

func TestElemSize(t *testing.T) {
	ti := func(dts ...string) Header {
		h := Header{}
		for _, dt := range dts {
			h.Tensors = append(h.Tensors, TensorInfo{DType: dt})
		}
		return h
	}
	tests := []struct {
		give Header
		want int
	}{
		{ti("BF16", "BF16"), 2},
		{ti("BF16", "F16"), 2},
		{ti("F32", "I32"), 4},
		{ti("F8_E4M3", "U8"), 1},
		{ti("I64"), 8},
		{ti("F32", "BF16"), 0},
		{ti("F64"), 0},
		{ti(), 0},
	}
	for _, tt := range tests {
		if got := tt.give.ElemSize(); got != tt.want {
			t.Errorf("ElemSize(%v) = %d, want %d", tt.give.Tensors, got, tt.want)
		}
	}
}
