package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/bits"
	"os"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// MaxHeaderSize is the largest safetensors header (JSON) this package accepts, in bytes.
const MaxHeaderSize = 100_000_000

// metadataKey is the reserved header key holding free-form string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor of a safetensors file.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
	File  string // path of the safetensors file that holds it
}

// NumElements returns the product of the shape (1 for a scalar). Shapes read by this package are
// validated not to overflow.
func (t TensorInfo) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NumBytes returns NumElements() * DType.Size().
func (t TensorInfo) NumBytes() int64 {
	return int64(t.NumElements()) * int64(t.DType.Size())
}

// SafetensorsFile is one .safetensors file, memory-mapped read-only. Its methods are safe for
// concurrent use; slices returned by Bytes are valid until Close and must not be written.
type SafetensorsFile struct {
	path    string
	mapping []byte // the whole file
	data    []byte // the data section, a sub-slice of mapping
	infos   map[string]TensorInfo
	offs    map[string][2]int64
	names   []string
	meta    map[string]string

	mu     sync.RWMutex
	closed bool
}

// OpenSafetensors memory-maps the file at path and validates its header (see ParseHeader).
func OpenSafetensors(path string) (*SafetensorsFile, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("model: open safetensors: %w", err)
	}
	return openSafetensorsFD(fd, path)
}

// openSafetensorsFD maps the open file fd (named path in errors) and closes fd.
func openSafetensorsFD(fd *os.File, path string) (*SafetensorsFile, error) {
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, fmt.Errorf("model: open safetensors: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s: not a regular file", ErrMalformed, path)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%w: %s: file is %d bytes, too short for the 8-byte header length", ErrMalformed, path, size)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("%w: %s: file is %d bytes, too large to map", ErrMalformed, path, size)
	}
	mapping, err := unix.Mmap(int(fd.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("model: mmap %s: %w", path, err)
	}
	f, err := newSafetensorsFile(path, mapping)
	if err != nil {
		_ = unix.Munmap(mapping)
		return nil, err
	}
	return f, nil
}

func newSafetensorsFile(path string, mapping []byte) (*SafetensorsFile, error) {
	size := int64(len(mapping))
	n := binary.LittleEndian.Uint64(mapping[:8])
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("%w: %s: header length %d exceeds the limit of %d bytes", ErrMalformed, path, n, MaxHeaderSize)
	}
	if n > uint64(size-8) {
		return nil, fmt.Errorf("%w: %s: header length %d is beyond the end of the file (file has %d bytes after the length; truncated?)",
			ErrMalformed, path, n, size-8)
	}
	header := mapping[8 : 8+n]
	data := mapping[8+n:]
	tensors, offsets, meta, err := parseHeader(header, int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, path, err)
	}
	f := &SafetensorsFile{
		path:    path,
		mapping: mapping,
		data:    data,
		infos:   make(map[string]TensorInfo, len(tensors)),
		offs:    make(map[string][2]int64, len(tensors)),
		meta:    meta,
	}
	for i, t := range tensors {
		t.File = path
		f.infos[t.Name] = t
		f.offs[t.Name] = offsets[i]
		f.names = append(f.names, t.Name)
	}
	slices.Sort(f.names)
	return f, nil
}

// Path returns the path the file was opened from.
func (f *SafetensorsFile) Path() string { return f.path }

// Names returns the tensor names, sorted.
func (f *SafetensorsFile) Names() []string { return slices.Clone(f.names) }

// Info returns the tensor's description.
func (f *SafetensorsFile) Info(name string) (TensorInfo, bool) {
	t, ok := f.infos[name]
	if ok {
		t.Shape = slices.Clone(t.Shape)
	}
	return t, ok
}

// Bytes returns the tensor's raw little-endian bytes: a read-only view into the mapping, valid
// until Close. Writing to it faults.
func (f *SafetensorsFile) Bytes(name string) ([]byte, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, fmt.Errorf("%w: %s", ErrClosed, f.path)
	}
	o, ok := f.offs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q in %s", ErrTensorNotFound, name, f.path)
	}
	return f.data[o[0]:o[1]:o[1]], nil
}

// Metadata returns a copy of the header's __metadata__ map (empty if absent).
func (f *SafetensorsFile) Metadata() map[string]string { return maps.Clone(f.meta) }

// Close unmaps the file. It is idempotent; slices from Bytes are invalid afterwards.
func (f *SafetensorsFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if err := unix.Munmap(f.mapping); err != nil {
		return fmt.Errorf("model: munmap %s: %w", f.path, err)
	}
	f.mapping, f.data = nil, nil
	return nil
}

// ParseHeader validates a safetensors header (the JSON bytes after the 8-byte length) against
// dataSize, the size of the data section that follows it, and returns the tensors sorted by data
// offset with their [begin, end) offsets and the __metadata__ map (never nil).
//
// Rules: valid UTF-8 JSON object starting with '{', no duplicate keys anywhere; each entry other
// than __metadata__ has exactly dtype (a known DType), shape (non-negative integers) and
// data_offsets [begin, end] with end-begin == elements*dtype size; the tensors, sorted by offset,
// tile [0, dataSize) exactly (no gaps, overlaps, trailing bytes or truncation); __metadata__ is a
// string-to-string map or null.
func ParseHeader(header []byte, dataSize int64) (tensors []TensorInfo, offsets [][2]int64, meta map[string]string, err error) {
	tensors, offsets, meta, err = parseHeader(header, dataSize)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return tensors, offsets, meta, nil
}

type headerEntry struct {
	info TensorInfo
	off  [2]int64
}

func parseHeader(header []byte, dataSize int64) ([]TensorInfo, [][2]int64, map[string]string, error) {
	if dataSize < 0 {
		return nil, nil, nil, fmt.Errorf("negative data size %d", dataSize)
	}
	if len(header) > MaxHeaderSize {
		return nil, nil, nil, fmt.Errorf("header length %d exceeds the limit of %d bytes", len(header), MaxHeaderSize)
	}
	if !utf8.Valid(header) {
		return nil, nil, nil, errors.New("header is not valid UTF-8")
	}
	if len(header) == 0 || header[0] != '{' {
		return nil, nil, nil, errors.New("header is not a JSON object (must start with '{')")
	}
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, nil, err
	}
	var (
		entries []headerEntry
		meta    map[string]string
		seen    = make(map[string]bool)
	)
	for dec.More() {
		key, err := stringToken(dec)
		if err != nil {
			return nil, nil, nil, err
		}
		if seen[key] {
			return nil, nil, nil, fmt.Errorf("duplicate key %q in header", key)
		}
		seen[key] = true
		if key == metadataKey {
			if meta, err = parseStringMap(dec); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %w", metadataKey, err)
			}
			continue
		}
		if key == "" {
			return nil, nil, nil, errors.New("tensor with an empty name")
		}
		e, err := parseEntry(dec, key)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("tensor %q: %w", key, err)
		}
		entries = append(entries, e)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, nil, nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return nil, nil, nil, fmt.Errorf("invalid header JSON after the object: %w", err)
		}
		return nil, nil, nil, fmt.Errorf("invalid header JSON: unexpected %s after the object", describeToken(tok))
	}
	if meta == nil {
		meta = map[string]string{}
	}

	slices.SortFunc(entries, func(a, b headerEntry) int {
		if a.off[0] != b.off[0] {
			return cmpInt64(a.off[0], b.off[0])
		}
		if a.off[1] != b.off[1] {
			return cmpInt64(a.off[1], b.off[1])
		}
		if a.info.Name < b.info.Name {
			return -1
		}
		return 1
	})
	var pos int64
	var prev string
	for _, e := range entries {
		switch {
		case e.off[0] < pos:
			return nil, nil, nil, fmt.Errorf("tensor %q data_offsets [%d, %d] overlap tensor %q ending at %d",
				e.info.Name, e.off[0], e.off[1], prev, pos)
		case e.off[0] > pos && prev == "":
			return nil, nil, nil, fmt.Errorf("gap in data: bytes [%d, %d) belong to no tensor (first tensor %q starts at %d)",
				pos, e.off[0], e.info.Name, e.off[0])
		case e.off[0] > pos:
			return nil, nil, nil, fmt.Errorf("gap in data: bytes [%d, %d) between tensor %q and tensor %q belong to no tensor",
				pos, e.off[0], prev, e.info.Name)
		}
		pos, prev = e.off[1], e.info.Name
	}
	if pos > dataSize {
		return nil, nil, nil, fmt.Errorf("file is truncated: header says data is %d bytes, file has %d", pos, dataSize)
	}
	if pos < dataSize {
		return nil, nil, nil, fmt.Errorf("trailing data: header says data is %d bytes, file has %d", pos, dataSize)
	}
	tensors := make([]TensorInfo, len(entries))
	offsets := make([][2]int64, len(entries))
	for i, e := range entries {
		tensors[i], offsets[i] = e.info, e.off
	}
	return tensors, offsets, meta, nil
}

func cmpInt64(a, b int64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

// parseEntry reads one tensor's {"dtype", "shape", "data_offsets"} object.
func parseEntry(dec *json.Decoder, name string) (headerEntry, error) {
	e := headerEntry{info: TensorInfo{Name: name}}
	if err := expectDelim(dec, '{'); err != nil {
		return e, err
	}
	var haveDType, haveShape, haveOffsets bool
	for dec.More() {
		key, err := stringToken(dec)
		if err != nil {
			return e, err
		}
		switch key {
		case "dtype":
			if haveDType {
				return e, errors.New(`duplicate key "dtype"`)
			}
			haveDType = true
			s, err := stringToken(dec)
			if err != nil {
				return e, fmt.Errorf("dtype: %w", err)
			}
			if e.info.DType, err = ParseDType(s); err != nil {
				return e, err
			}
		case "shape":
			if haveShape {
				return e, errors.New(`duplicate key "shape"`)
			}
			haveShape = true
			dims, err := intArray(dec)
			if err != nil {
				return e, fmt.Errorf("shape: %w", err)
			}
			e.info.Shape = make([]int, len(dims))
			for i, d := range dims {
				if d > math.MaxInt {
					return e, fmt.Errorf("shape: dimension %d too large", d)
				}
				e.info.Shape[i] = int(d)
			}
		case "data_offsets":
			if haveOffsets {
				return e, errors.New(`duplicate key "data_offsets"`)
			}
			haveOffsets = true
			offs, err := intArray(dec)
			if err != nil {
				return e, fmt.Errorf("data_offsets: %w", err)
			}
			if len(offs) != 2 {
				return e, fmt.Errorf("data_offsets has %d values, want [begin, end]", len(offs))
			}
			if offs[0] > offs[1] {
				return e, fmt.Errorf("data_offsets [%d, %d]: begin > end", offs[0], offs[1])
			}
			e.off = [2]int64{offs[0], offs[1]}
		default:
			return e, fmt.Errorf("unknown field %q", key)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return e, err
	}
	switch {
	case !haveDType:
		return e, errors.New(`missing "dtype"`)
	case !haveShape:
		return e, errors.New(`missing "shape"`)
	case !haveOffsets:
		return e, errors.New(`missing "data_offsets"`)
	}
	nbytes, ok := shapeBytes(e.info.Shape, e.info.DType)
	if !ok {
		return e, fmt.Errorf("shape %v of %s overflows", e.info.Shape, e.info.DType)
	}
	if got := e.off[1] - e.off[0]; got != nbytes {
		return e, fmt.Errorf("data_offsets [%d, %d] span %d bytes, but shape %v of %s needs %d",
			e.off[0], e.off[1], got, e.info.Shape, e.info.DType, nbytes)
	}
	return e, nil
}

// shapeBytes returns product(shape)*dt.Size(), or false if it overflows int64 (or int).
func shapeBytes(shape []int, dt DType) (int64, bool) {
	n := uint64(dt.Size())
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 || lo > math.MaxInt {
			return 0, false
		}
		n = lo
	}
	return int64(n), true
}

// nextToken reads a token; any decoder error (including a premature end) is a JSON syntax error.
func nextToken(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, errors.New("invalid header JSON: unexpected end")
	}
	if err != nil {
		return nil, fmt.Errorf("invalid header JSON: %w", err)
	}
	return tok, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := nextToken(dec)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("got %s, want %q", describeToken(tok), string(want))
	}
	return nil
}

func stringToken(dec *json.Decoder) (string, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("got %s, want a string", describeToken(tok))
	}
	return s, nil
}

// intArray reads a JSON array of non-negative integers.
func intArray(dec *json.Decoder) ([]int64, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, err
	}
	var out []int64
	for dec.More() {
		tok, err := nextToken(dec)
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("got %s, want a non-negative integer", describeToken(tok))
		}
		v, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("got %s, want a non-negative integer", string(num))
		}
		out = append(out, v)
	}
	if err := expectDelim(dec, ']'); err != nil {
		return nil, err
	}
	return out, nil
}

// parseStringMap reads null or a JSON object of string values, rejecting duplicate keys.
func parseStringMap(dec *json.Decoder) (map[string]string, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return map[string]string{}, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("got %s, want an object of strings", describeToken(tok))
	}
	m := map[string]string{}
	for dec.More() {
		k, err := stringToken(dec)
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("duplicate key %q", k)
		}
		v, err := stringToken(dec)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		m[k] = v
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return m, nil
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		return strconv.Quote(string(v))
	case string:
		return "string " + strconv.Quote(v)
	case json.Number:
		return "number " + string(v)
	case bool:
		return "bool " + strconv.FormatBool(v)
	}
	return fmt.Sprintf("%v", tok)
}
