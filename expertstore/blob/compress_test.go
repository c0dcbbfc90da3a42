package blob

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

func roundTrip(t *testing.T, raw, frame []byte) {
	t.Helper()
	n, err := DecompressedSize(frame)
	if err != nil || n != len(raw) {
		t.Fatalf("DecompressedSize = %d, %v; want %d", n, err, len(raw))
	}
	for _, workers := range []int{1, 3} {
		dst := make([]byte, n)
		if err := decompress(dst, frame, workers, true); err != nil {
			t.Fatalf("decompress (%d goroutines): %v", workers, err)
		}
		if !bytes.Equal(dst, raw) {
			t.Fatalf("decompress (%d goroutines): output differs from the input", workers)
		}
	}
	dst := make([]byte, n)
	if err := Decompress(dst, frame); err != nil || !bytes.Equal(dst, raw) {
		t.Fatalf("Decompress: %v (or output differs)", err)
	}
}

func TestCompressRoundTrip(t *testing.T) {
	const n = 300_000 // elements: several segments, the last one short
	pattern := randomBytes(999, 5)
	tests := []struct {
		name      string
		give      []byte
		elemSize  int
		wantOK    bool
		wantRatio [2]float64 // bounds on len(frame)/len(raw) when OK
	}{
		{"bf16 N(0,0.02)", weights("BF16", n, 0.02, 1), 2, true, [2]float64{0.60, 0.67}},
		{"bf16 N(0,1)", weights("BF16", n, 1, 2), 2, true, [2]float64{0.60, 0.70}},
		{"f32 N(0,0.02)", weights("F32", n, 0.02, 3), 4, true, [2]float64{0.80, 0.84}},
		{"f16 N(0,0.02)", weights("F16", n, 0.02, 4), 2, true, [2]float64{0.70, 0.90}},
		{"bf16 with a tail byte", append(weights("BF16", n, 0.02, 1), 0x7f), 2, true, [2]float64{0.60, 0.67}},
		{"f32 with 3 tail bytes", append(weights("F32", n, 0.02, 1), 1, 2, 3), 4, true, [2]float64{0.80, 0.84}},
		{"zeros", make([]byte, 1<<20), 2, true, [2]float64{0, 0.001}},
		{"zeros, elem size 4", make([]byte, 1<<20), 4, true, [2]float64{0, 0.001}},
		{"repeated pattern (zstd)", bytes.Repeat(pattern, 1000), 1, true, [2]float64{0, 0.05}},
		{"elem size 3 is 1", bytes.Repeat(pattern, 100), 3, true, [2]float64{0, 0.2}},
		{"random", randomBytes(1<<20, 6), 2, false, [2]float64{}},
		{"random, elem size 1", randomBytes(1<<20, 7), 1, false, [2]float64{}},
		{"tiny", []byte{1, 2, 3}, 2, false, [2]float64{}},
		{"empty", nil, 2, false, [2]float64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frame, ok := Compress(tt.give, tt.elemSize, 0)
			if ok != tt.wantOK || ok != (frame != nil) {
				t.Fatalf("Compress ok = %v (frame %d bytes), want %v", ok, len(frame), tt.wantOK)
			}
			if !ok {
				return
			}
			ratio := float64(len(frame)) / float64(len(tt.give))
			t.Logf("ratio %.4f", ratio)
			if ratio < tt.wantRatio[0] || ratio > tt.wantRatio[1] {
				t.Errorf("ratio %.4f, want within %v", ratio, tt.wantRatio)
			}
			if want := map[int]int{2: 2, 4: 4}[tt.elemSize]; max(want, 1) != int(frame[16]) {
				t.Errorf("frame element size %d, want %d", frame[16], max(want, 1))
			}
			roundTrip(t, tt.give, frame)
		})
	}
}

func TestCompressMinSaving(t *testing.T) {
	raw := weights("BF16", 100_000, 0.02, 8) // saves about 34%
	tests := []struct {
		give float64
		want bool
	}{
		{-1, true}, {0, true}, {0.10, true}, {0.30, true}, {0.40, false}, {1, false}, {math.NaN(), false},
	}
	for _, tt := range tests {
		if frame, ok := Compress(raw, 2, tt.give); ok != tt.want || ok != (frame != nil) {
			t.Errorf("Compress(minSaving %v) ok = %v, frame %d bytes; want %v", tt.give, ok, len(frame), tt.want)
		}
	}
}

// mixedFrame is a small frame with every method and transform in it: segments of seg elements
// of weights (huff0 exponents, raw mantissas, rotated), zeros (RLE), a repeating pattern (zstd),
// weights again (a short segment) and a tail byte.
func mixedFrame(t testing.TB, seg int) ([]byte, []byte) {
	t.Helper()
	pattern := randomBytes(37, 9)
	raw := weights("BF16", seg, 0.02, 10)
	raw = append(raw, make([]byte, 2*seg)...)
	raw = append(raw, bytes.Repeat(pattern, 2*seg/len(pattern)+1)[:2*seg]...)
	raw = append(raw, weights("BF16", seg*2/3, 0.02, 11)...)
	raw = append(raw, 0x42)
	frame, err := compress(raw, 2, seg, 2)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := parseFrame(frame, true)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[method]bool{}
	rot := false
	for _, s := range fi.segs {
		rot = rot || s.rot
		for p := range fi.es {
			seen[s.methods[p]] = true
		}
	}
	if len(seen) != 4 || !rot {
		t.Fatalf("mixed frame uses methods %v, rotation %v: want all four and rotation", seen, rot)
	}
	return raw, frame
}

func TestMixedFrameRoundTrip(t *testing.T) {
	raw, frame := mixedFrame(t, 1024)
	roundTrip(t, raw, frame)
}

// refreshTableCRC recomputes the header-and-table checksum of a frame whose table size is nseg
// entries (as originally written).
func refreshTableCRC(frame []byte, nseg int) {
	end := frameFixed + nseg*(5+5*int(frame[16]))
	binary.LittleEndian.PutUint32(frame[end:], CRC32C(frame[:end]))
}

func TestDecompressCorrupt(t *testing.T) {
	raw, frame := mixedFrame(t, 1024)
	fi, err := parseFrame(frame, true)
	if err != nil {
		t.Fatal(err)
	}
	nseg := len(fi.segs)
	entry := 5 + 5*fi.es
	tableAt := func(s, p int) int { return frameFixed + s*entry + 5 + 5*p } // method byte of (s, p)
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(frame)
		f(b)
		return b
	}
	tests := []struct {
		name string
		give []byte
		want string
	}{
		{"bad magic", edit(func(b []byte) { b[0] = 'X' }), "bad frame magic"},
		{"too short", frame[:10], "shorter than its"},
		{"huge raw size", edit(func(b []byte) { binary.LittleEndian.PutUint64(b[8:], 1<<30) }), "cannot hold their table"},
		{"raw size over MaxInt", edit(func(b []byte) { binary.LittleEndian.PutUint64(b[8:], 1<<63) }), "does not fit"},
		{"elem size", edit(func(b []byte) { b[16] = 3 }), "element size 3"},
		{"segment size", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[20:], 1<<20) }), "segment of 1048576"},
		{"table checksum", edit(func(b []byte) { b[frameFixed+1] ^= 1 }), "header checksum"},
		{"payload checksum", edit(func(b []byte) { b[len(b)-1] ^= 1 }), "segment 3 checksum"},
		{"extra byte", append(bytes.Clone(frame), 0), "payload is"},
		{"truncated payload", frame[:len(frame)-1], "run past the"},
		// Lies that pass the checksums: the structure must still catch them.
		{"raw size lie", edit(func(b []byte) {
			binary.LittleEndian.PutUint64(b[8:], uint64(len(raw)-2))
			refreshTableCRC(b, nseg)
		}), "segment 3 plane"},
		{"plane length lie", edit(func(b []byte) {
			i := tableAt(0, 1) // the huff0 exponent plane of segment 0
			n := binary.LittleEndian.Uint32(b[i+1:])
			binary.LittleEndian.PutUint32(b[i+1:], n+1)
			refreshTableCRC(b, nseg)
		}), "run past the"},
		{"plane boundary lie", edit(func(b []byte) {
			i := tableAt(3, 0)
			j := tableAt(3, 1)
			binary.LittleEndian.PutUint32(b[i+1:], binary.LittleEndian.Uint32(b[i+1:])+1)
			binary.LittleEndian.PutUint32(b[j+1:], binary.LittleEndian.Uint32(b[j+1:])-1)
			refreshTableCRC(b, nseg)
		}), "segment 3 plane"},
		{"unknown method", edit(func(b []byte) { b[tableAt(1, 0)] = 9; refreshTableCRC(b, nseg) }), "unknown method 9"},
		{"unknown transform", edit(func(b []byte) { b[frameFixed+4] = 7; refreshTableCRC(b, nseg) }), "transform 7"},
		{"tail padding", edit(func(b []byte) { b[19] = 1; refreshTableCRC(b, nseg) }), "tail padding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, len(raw))
			err := Decompress(dst, tt.give)
			if !errors.Is(err, ErrCorrupt) || !contains(err, tt.want) {
				t.Errorf("Decompress error = %v, want ErrCorrupt containing %q", err, tt.want)
			}
		})
	}
}

// Every single-byte change and every truncation of a frame is an error: the checksums cover every
// byte.
func TestDecompressEveryByte(t *testing.T) {
	raw, frame := mixedFrame(t, 1024)
	dst := make([]byte, len(raw))
	b := bytes.Clone(frame)
	for i := range b {
		b[i] ^= 0x20
		if err := Decompress(dst, b); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d of %d changed: Decompress error = %v, want ErrCorrupt", i, len(b), err)
		}
		// Without the checksums the decoders see the damage: any result but a panic will do.
		_ = decompress(dst, b, 2, false)
		b[i] ^= 0x20
	}
	for n := range len(frame) {
		if _, err := DecompressedSize(frame[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("DecompressedSize of %d-byte prefix: error = %v, want ErrCorrupt", n, err)
		}
		if err := Decompress(dst, frame[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%d-byte prefix: Decompress error = %v, want ErrCorrupt", n, err)
		}
	}
}

func TestDecompressWrongDst(t *testing.T) {
	raw, frame := mixedFrame(t, 1024)
	for _, n := range []int{0, len(raw) - 1, len(raw) + 1} {
		err := Decompress(make([]byte, n), frame)
		if !errors.Is(err, ErrInvalid) || !contains(err, "frame holds") {
			t.Errorf("Decompress into %d bytes: %v, want ErrInvalid", n, err)
		}
	}
}

func TestPlanesRoundTrip(t *testing.T) {
	for _, es := range []int{1, 2, 4} {
		for m := range 70 {
			for _, rot := range []bool{false, true} {
				if rot && es == 1 {
					continue // no rotation of single bytes (parseFrame rejects it)
				}
				src := randomBytes(m*es, uint64(m))
				planes := make([][]byte, es)
				for p := range planes {
					planes[p] = make([]byte, m)
				}
				split(planes, src, m, rot)
				for p := range planes {
					for i := range m {
						want := src[i*es+p]
						if rot {
							want = rotatedByte(src[i*es:(i+1)*es], p)
						}
						if planes[p][i] != want {
							t.Fatalf("es %d m %d rot %v: plane %d[%d] = %02x, want %02x", es, m, rot, p, i, planes[p][i], want)
						}
					}
				}
				got := make([]byte, m*es)
				interleave(got, planes, m, rot)
				if !bytes.Equal(got, src) {
					t.Fatalf("es %d m %d rot %v: interleave(split(x)) != x", es, m, rot)
				}
				if es > 1 { // the portable version agrees with the assembly
					gen := make([]byte, m*es)
					if es == 2 {
						interleave2Generic(gen, planes[0], planes[1], rot)
					} else {
						interleave4Generic(gen, planes[0], planes[1], planes[2], planes[3], rot)
					}
					if !bytes.Equal(gen, src) {
						t.Fatalf("es %d m %d rot %v: generic interleave differs", es, m, rot)
					}
				}
			}
		}
	}
}

// rotatedByte is byte p of the little-endian element e rotated left by one bit.
func rotatedByte(e []byte, p int) byte {
	var v uint64
	for i := len(e) - 1; i >= 0; i-- {
		v = v<<8 | uint64(e[i])
	}
	bits := uint(8 * len(e))
	v = (v<<1 | v>>(bits-1)) & (1<<bits - 1)
	return byte(v >> (8 * p))
}
