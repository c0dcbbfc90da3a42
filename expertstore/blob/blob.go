package blob

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/pregate/pregate/model"
)

// The raw blob format:
//
//	offset 0   "PGBLOB01"                     magic (8 bytes)
//	offset 8   u32 little-endian              L, the JSON header's length (1 .. MaxHeaderSize)
//	offset 12  JSON header (L bytes)          Header
//	           zero bytes up to the next multiple of Alignment: the data section starts there
//	data       tensors, each at a multiple of Alignment from the data start, zero bytes between
//	           them; the blob ends where the last tensor ends
//
// Tensor data is stored as in safetensors (little-endian elements, row-major), so a receiver can
// view a tensor in place: the data section starts 64-aligned within the blob, and a blob received
// into a 64-aligned buffer has every tensor 64-aligned in memory.
const (
	Magic         = "PGBLOB01"
	Alignment     = 64
	MaxHeaderSize = 1 << 20
	prefixSize    = len(Magic) + 4
)

// Kind says what a blob holds.
type Kind string

// The blob kinds.
const (
	KindExpert Kind = "expert" // one expert of one MoE block
	KindDense  Kind = "dense"  // the dense (non-expert) weights of a model
)

// TensorInfo describes one tensor of a blob.
type TensorInfo struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"` // safetensors dtype names: F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, U8
	Shape  []int  `json:"shape"`
	Offset int64  `json:"offset"` // from the start of the data section
	Size   int64  `json:"size"`   // bytes: product(shape) × the dtype's size
}

// Header is a blob's JSON header.
type Header struct {
	Kind    Kind         `json:"kind"`
	Model   string       `json:"model,omitempty"`
	Block   int          `json:"block"`  // MoE block index in forward order (expert blobs); -1 for dense
	Expert  int          `json:"expert"` // expert index; -1 for dense
	Tensors []TensorInfo `json:"tensors"`
}

// Tensor is one tensor to Build into a blob. Data holds the little-endian elements, row-major.
type Tensor struct {
	Name  string
	DType string
	Shape []int
	Data  []byte
}

// Build returns the raw blob of h and tensors. h.Tensors is ignored and filled from tensors, in
// their order, each at the next 64-byte-aligned offset. The dtype must be known, every dimension
// non-negative (an empty shape is a scalar), names non-empty and unique, and len(Data) exactly
// product(shape) × the dtype's size.
func Build(h Header, tensors []Tensor) ([]byte, error) {
	h.Tensors = make([]TensorInfo, 0, len(tensors))
	var off int64
	for i, t := range tensors {
		shape := slices.Clone(t.Shape)
		if shape == nil {
			shape = []int{}
		}
		info := TensorInfo{Name: t.Name, DType: t.DType, Shape: shape, Offset: alignUp(off)}
		size, err := tensorSize(info)
		if err != nil {
			return nil, fmt.Errorf("%w: Build: tensor %d %q: %v", ErrInvalid, i, t.Name, err)
		}
		if int64(len(t.Data)) != size {
			return nil, fmt.Errorf("%w: Build: tensor %d %q: %d bytes of data, %s %v needs %d",
				ErrInvalid, i, t.Name, len(t.Data), t.DType, t.Shape, size)
		}
		info.Size = size
		h.Tensors = append(h.Tensors, info)
		off = info.Offset + size
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("%w: Build: %v", ErrInvalid, err)
	}
	js, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("%w: Build: header: %v", ErrInvalid, err)
	}
	if len(js) > MaxHeaderSize {
		return nil, fmt.Errorf("%w: Build: header is %d bytes, the limit is %d", ErrInvalid, len(js), MaxHeaderSize)
	}
	start := alignUp(int64(prefixSize + len(js)))
	if off > math.MaxInt-start {
		return nil, fmt.Errorf("%w: Build: %d bytes of tensor data do not fit in memory", ErrInvalid, off)
	}
	b := make([]byte, start+off)
	copy(b, Magic)
	binary.LittleEndian.PutUint32(b[len(Magic):], uint32(len(js)))
	copy(b[prefixSize:], js)
	data := b[start:]
	for i, t := range tensors {
		copy(data[h.Tensors[i].Offset:], t.Data)
	}
	return b, nil
}

// Parse checks a raw blob and returns its header and data section (a sub-slice of b). It is
// strict: the magic, a header length within bounds (at most MaxHeaderSize), a JSON header with no
// unknown fields and nothing after it, a known kind (expert blobs with block and expert ≥ 0, dense
// with -1), zero padding, and every tensor a known dtype, of size product(shape) × dtype size, at a
// 64-aligned offset, within the data section and overlapping no other; the data section ends where
// the last tensor ends and holds only zeros between tensors.
func Parse(b []byte) (Header, []byte, error) {
	if len(b) < prefixSize {
		return Header{}, nil, fmt.Errorf("%w: %d bytes is too short for a blob (magic and header length take %d)", ErrCorrupt, len(b), prefixSize)
	}
	if string(b[:len(Magic)]) != Magic {
		return Header{}, nil, fmt.Errorf("%w: bad magic %q, want %q", ErrCorrupt, b[:len(Magic)], Magic)
	}
	n := binary.LittleEndian.Uint32(b[len(Magic):])
	if n == 0 || n > MaxHeaderSize {
		return Header{}, nil, fmt.Errorf("%w: header length %d out of range 1..%d", ErrCorrupt, n, MaxHeaderSize)
	}
	start := alignUp(int64(prefixSize) + int64(n))
	if start > int64(len(b)) {
		return Header{}, nil, fmt.Errorf("%w: header length %d needs %d bytes up to the data section, the blob has %d (truncated)",
			ErrCorrupt, n, start, len(b))
	}
	var h Header
	dec := json.NewDecoder(bytes.NewReader(b[prefixSize : prefixSize+int(n)]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Header{}, nil, fmt.Errorf("%w: header JSON: %v", ErrCorrupt, err)
	}
	if !onlySpace(b[prefixSize+int(dec.InputOffset()) : prefixSize+int(n)]) {
		return Header{}, nil, fmt.Errorf("%w: header JSON: data after the header object", ErrCorrupt)
	}
	if i := nonZero(b[prefixSize+int(n) : start]); i >= 0 {
		return Header{}, nil, fmt.Errorf("%w: header padding byte at %d is not zero", ErrCorrupt, prefixSize+int(n)+i)
	}
	if err := h.validate(); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	data := b[start:]
	if err := h.checkLayout(data); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return h, data, nil
}

// Tensor returns the bytes of the tensor called name within data (the data section Parse
// returned), capped so that appending to them cannot overwrite the next tensor.
func (h Header) Tensor(data []byte, name string) ([]byte, TensorInfo, error) {
	for _, t := range h.Tensors {
		if t.Name != name {
			continue
		}
		if t.Offset < 0 || t.Size < 0 || t.Offset > int64(len(data)) || t.Size > int64(len(data))-t.Offset {
			return nil, TensorInfo{}, fmt.Errorf("%w: tensor %q at [%d, +%d) is outside the %d-byte data section",
				ErrCorrupt, name, t.Offset, t.Size, len(data))
		}
		end := t.Offset + t.Size
		return data[t.Offset:end:end], t, nil
	}
	return nil, TensorInfo{}, fmt.Errorf("%w: %q (blob %s)", ErrNotFound, name, h.describe())
}

// ElemSize is the element size in bytes shared by all tensors of the blob (the byte-plane width
// for Compress), 0 if the tensors have mixed sizes or there are none.
func (h Header) ElemSize() int {
	size := 0
	for _, t := range h.Tensors {
		s := model.DType(t.DType).Size()
		if s == 0 || size != 0 && s != size {
			return 0
		}
		size = s
	}
	return size
}

// describe names a blob in error messages.
func (h Header) describe() string {
	if h.Kind == KindExpert {
		return fmt.Sprintf("%s %q block %d expert %d", h.Kind, h.Model, h.Block, h.Expert)
	}
	return fmt.Sprintf("%s %q", h.Kind, h.Model)
}

// validate checks the header's own fields and every tensor's dtype, shape and size (not where
// the tensors lie).
func (h Header) validate() error {
	switch h.Kind {
	case KindExpert:
		if h.Block < 0 || h.Expert < 0 {
			return fmt.Errorf("expert blob with block %d, expert %d (want both ≥ 0)", h.Block, h.Expert)
		}
	case KindDense:
		if h.Block != -1 || h.Expert != -1 {
			return fmt.Errorf("dense blob with block %d, expert %d (want -1, -1)", h.Block, h.Expert)
		}
	default:
		return fmt.Errorf("unknown kind %q (want %q or %q)", h.Kind, KindExpert, KindDense)
	}
	seen := make(map[string]bool, len(h.Tensors))
	for i, t := range h.Tensors {
		if t.Name == "" {
			return fmt.Errorf("tensor %d has no name", i)
		}
		if seen[t.Name] {
			return fmt.Errorf("tensor %d: duplicate name %q", i, t.Name)
		}
		seen[t.Name] = true
		size, err := tensorSize(t)
		if err != nil {
			return fmt.Errorf("tensor %q: %v", t.Name, err)
		}
		if t.Size != size {
			return fmt.Errorf("tensor %q: size %d, but %s %v is %d bytes", t.Name, t.Size, t.DType, t.Shape, size)
		}
	}
	return nil
}

// checkLayout checks that the tensors lie within data, aligned and without overlap, that data
// ends with the last tensor, and that the bytes between tensors are zero. Sizes are validated.
func (h Header) checkLayout(data []byte) error {
	order := make([]int, len(h.Tensors))
	for i, t := range h.Tensors {
		order[i] = i
		if t.Offset < 0 || t.Offset%Alignment != 0 {
			return fmt.Errorf("tensor %q: offset %d is not a non-negative multiple of %d", t.Name, t.Offset, Alignment)
		}
		if t.Offset > int64(len(data)) || t.Size > int64(len(data))-t.Offset {
			return fmt.Errorf("tensor %q: [%d, %d+%d) is out of bounds of the %d-byte data section (truncated?)",
				t.Name, t.Offset, t.Offset, t.Size, len(data))
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		ta, tb := h.Tensors[a], h.Tensors[b]
		if ta.Offset != tb.Offset {
			return cmpInt64(ta.Offset, tb.Offset)
		}
		return cmpInt64(ta.Size, tb.Size)
	})
	var end int64
	prev := ""
	for _, i := range order {
		t := h.Tensors[i]
		if t.Offset < end {
			return fmt.Errorf("tensor %q at [%d, %d) overlaps tensor %q ending at %d", t.Name, t.Offset, t.Offset+t.Size, prev, end)
		}
		if j := nonZero(data[end:t.Offset]); j >= 0 {
			return fmt.Errorf("padding byte at data offset %d (before tensor %q) is not zero", end+int64(j), t.Name)
		}
		end, prev = t.Offset+t.Size, t.Name
	}
	if end != int64(len(data)) {
		return fmt.Errorf("data section is %d bytes, the tensors end at %d", len(data), end)
	}
	return nil
}

// tensorSize returns product(shape) × dtype size, checking the dtype, the dimensions and overflow.
func tensorSize(t TensorInfo) (int64, error) {
	es := model.DType(t.DType).Size()
	if es == 0 {
		return 0, fmt.Errorf("unknown dtype %q (known: F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, U8)", t.DType)
	}
	n := uint64(es)
	for _, d := range t.Shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", t.Shape)
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("shape %v of %s overflows", t.Shape, t.DType)
		}
		n = lo
	}
	return int64(n), nil
}

// alignUp rounds n up to a multiple of Alignment (n ≤ MaxInt64 − Alignment).
func alignUp(n int64) int64 {
	return (n + Alignment - 1) &^ (Alignment - 1)
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// nonZero returns the index of the first non-zero byte of b, or -1.
func nonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

// onlySpace reports whether b is JSON whitespace.
func onlySpace(b []byte) bool {
	return strings.TrimLeft(string(b), " \t\r\n") == ""
}
