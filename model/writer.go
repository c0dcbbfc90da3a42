package model

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// SafetensorsWriter writes a safetensors file: all tensors are declared up front (so the header can
// be written first), then their bytes are streamed with Write in declaration order, back to back.
// The file appears at its path only when Close succeeds (it is written to path+".tmp", fsynced and
// renamed). A SafetensorsWriter is not safe for concurrent use.
type SafetensorsWriter struct {
	path    string
	tmp     string
	f       *os.File
	bw      *bufio.Writer
	total   int64 // declared data bytes
	written int64
	err     error // sticky
	closed  bool
}

// CreateSafetensors validates the declared tensors (unique non-empty names, known dtypes,
// non-negative shapes), writes the header to path+".tmp" and returns a writer for the data.
// Tensor data is laid out in the order given (declare wider dtypes first to keep every tensor
// aligned to its element size: the header is padded so data starts 8-aligned); meta (may be nil)
// becomes __metadata__.
func CreateSafetensors(path string, tensors []TensorInfo, meta map[string]string) (*SafetensorsWriter, error) {
	header, total, err := encodeHeader(tensors, meta)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrWrite, path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("model: create safetensors: %w", err)
	}
	w := &SafetensorsWriter{path: path, tmp: tmp, f: f, bw: bufio.NewWriterSize(f, 4<<20), total: total}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	if _, err := w.bw.Write(n[:]); err != nil {
		w.abort()
		return nil, fmt.Errorf("model: write %s: %w", tmp, err)
	}
	if _, err := w.bw.Write(header); err != nil {
		w.abort()
		return nil, fmt.Errorf("model: write %s: %w", tmp, err)
	}
	return w, nil
}

// encodeHeader builds the padded JSON header and returns it with the total data size.
func encodeHeader(tensors []TensorInfo, meta map[string]string) ([]byte, int64, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			buf.WriteByte(',')
		}
		first = false
	}
	if len(meta) > 0 {
		sep()
		buf.WriteString(jsonString(metadataKey))
		buf.WriteString(":{")
		keys := make([]string, 0, len(meta))
		for k := range meta {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(jsonString(k))
			buf.WriteByte(':')
			buf.WriteString(jsonString(meta[k]))
		}
		buf.WriteByte('}')
	}
	seen := make(map[string]bool, len(tensors))
	var off int64
	for _, t := range tensors {
		switch {
		case t.Name == "":
			return nil, 0, errors.New("tensor with an empty name")
		case t.Name == metadataKey:
			return nil, 0, fmt.Errorf("tensor name %q is reserved", t.Name)
		case seen[t.Name]:
			return nil, 0, fmt.Errorf("tensor %q declared twice", t.Name)
		}
		seen[t.Name] = true
		if _, err := ParseDType(string(t.DType)); err != nil {
			return nil, 0, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		nbytes, ok := shapeBytes(t.Shape, t.DType)
		if !ok || off+nbytes < off {
			return nil, 0, fmt.Errorf("tensor %q: shape %v of %s is negative or overflows", t.Name, t.Shape, t.DType)
		}
		sep()
		buf.WriteString(jsonString(t.Name))
		buf.WriteString(`:{"dtype":"`)
		buf.WriteString(string(t.DType))
		buf.WriteString(`","shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.Itoa(d))
		}
		buf.WriteString(`],"data_offsets":[`)
		buf.WriteString(strconv.FormatInt(off, 10))
		buf.WriteByte(',')
		buf.WriteString(strconv.FormatInt(off+nbytes, 10))
		buf.WriteString("]}")
		off += nbytes
	}
	buf.WriteByte('}')
	for buf.Len()%8 != 0 {
		buf.WriteByte(' ')
	}
	if buf.Len() > MaxHeaderSize {
		return nil, 0, fmt.Errorf("header would be %d bytes, over the limit of %d", buf.Len(), MaxHeaderSize)
	}
	return buf.Bytes(), off, nil
}

// jsonString quotes s as a JSON string without HTML escaping.
func jsonString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return string(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

// Write appends tensor bytes. Writing past the declared total is an error (nothing past it is
// written).
func (w *SafetensorsWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("%w: %s: write after Close", ErrWrite, w.path)
	}
	if w.err != nil {
		return 0, w.err
	}
	n := len(p)
	over := false
	if rest := w.total - w.written; int64(n) > rest {
		n, over = int(rest), true
	}
	m, err := w.bw.Write(p[:n])
	w.written += int64(m)
	if err != nil {
		w.err = fmt.Errorf("model: write %s: %w", w.tmp, err)
		return m, w.err
	}
	if over {
		w.err = fmt.Errorf("%w: %s: more bytes written than the %d declared", ErrWrite, w.path, w.total)
		return m, w.err
	}
	return m, nil
}

// Close finishes the file: it fails (and removes the temporary file) if the bytes written differ
// from the declared total or any write failed; otherwise it flushes, fsyncs and renames
// path+".tmp" to path. Calling Close again returns the first result.
func (w *SafetensorsWriter) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err == nil && w.written != w.total {
		w.err = fmt.Errorf("%w: %s: %d bytes of tensor data written, %d declared", ErrWrite, w.path, w.written, w.total)
	}
	if w.err != nil {
		w.abort()
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.abort()
		w.err = fmt.Errorf("model: write %s: %w", w.tmp, err)
		return w.err
	}
	if err := w.f.Sync(); err != nil {
		w.abort()
		w.err = fmt.Errorf("model: fsync %s: %w", w.tmp, err)
		return w.err
	}
	if err := w.f.Close(); err != nil {
		_ = os.Remove(w.tmp)
		w.err = fmt.Errorf("model: close %s: %w", w.tmp, err)
		return w.err
	}
	if err := os.Rename(w.tmp, w.path); err != nil {
		_ = os.Remove(w.tmp)
		w.err = fmt.Errorf("model: rename %s: %w", w.tmp, err)
		return w.err
	}
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		_ = d.Sync() // best effort: persist the rename
		_ = d.Close()
	}
	return nil
}

func (w *SafetensorsWriter) abort() {
	_ = w.f.Close()
	_ = os.Remove(w.tmp)
}

// WriteSafetensors writes a whole file at once; data[i] holds tensors[i]'s bytes.
func WriteSafetensors(path string, tensors []TensorInfo, data [][]byte, meta map[string]string) error {
	if len(data) != len(tensors) {
		return fmt.Errorf("%w: %s: %d tensors declared, %d data slices given", ErrWrite, path, len(tensors), len(data))
	}
	for i, t := range tensors {
		want, ok := shapeBytes(t.Shape, t.DType)
		if ok && int64(len(data[i])) != want {
			return fmt.Errorf("%w: %s: tensor %q: %d bytes given, shape %v of %s needs %d",
				ErrWrite, path, t.Name, len(data[i]), t.Shape, t.DType, want)
		}
	}
	w, err := CreateSafetensors(path, tensors, meta)
	if err != nil {
		return err
	}
	for _, d := range data {
		if _, err := w.Write(d); err != nil {
			_ = w.Close()
			return err
		}
	}
	return w.Close()
}
