package blob

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/huff0"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Encoding says how a blob's bytes travel.
type Encoding uint8

// The encodings.
const (
	Raw    Encoding = 0 // the raw blob
	Planes Encoding = 1 // a Compress frame
)

// String returns "raw", "planes" or "encoding(N)".
func (e Encoding) String() string {
	switch e {
	case Raw:
		return "raw"
	case Planes:
		return "planes"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

// The compressed frame (all integers little-endian):
//
//	0   "PGPLANE1"       magic
//	8   u64              raw size R
//	16  u8               element size E (1, 2 or 4)
//	17  3 bytes          the last R mod E raw bytes (the tail that fills no whole element), zero-padded
//	20  u32              elements per segment S (minSegElems .. maxSegElems)
//	24  segment table    one entry per segment of S elements (the last may be short), in order:
//	                       u32 CRC32C of the segment's payload,
//	                       u8 transform: 0 plain, 1 each element rotated left one bit (planes.go),
//	                       E × (u8 method, u32 length): the segment's plane blocks
//	    u32              CRC32C of bytes 0 .. the end of the segment table
//	    payload          every segment's plane blocks, in table order, nothing else
//
// A segment is S consecutive elements split into E byte planes; each plane block is coded on its
// own (raw, huff0 4X, zstd or one repeated byte), so segments decode independently and in
// parallel, into buffers that stay in the core's L2 cache, straight into their place in dst.
// Every byte is covered by a CRC32C (the header and table by one, each segment's payload by its
// own), so any corruption is an error before a decoder sees it, not wrong weights.
const (
	frameMagic = "PGPLANE1"
	frameFixed = 24
	// defaultSegElems: 64K elements, so a worker's planes and output (256 KiB to 512 KiB) stay
	// in L2; 32K and 128K measured the same.
	defaultSegElems = 64 << 10
	minSegElems     = 64
	// maxSegElems keeps plane blocks within huff0's block limit (256 KiB − 1).
	maxSegElems = 128 << 10
)

// method is how one plane block is coded.
type method uint8

const (
	methodRaw   method = 0 // the plane's bytes
	methodHuff0 method = 1 // huff0 4X stream with its table
	methodZstd  method = 2 // one zstd frame
	methodRLE   method = 3 // one byte, repeated for the whole plane
)

// A compressed plane block is kept only when it saves at least 1/minBlockGain of the plane (a
// raw plane decodes at memory speed), and zstd replaces huff0 only when it is smaller by at least
// 1/zstdGain (huff0 decodes faster). zstd only wins where a plane repeats itself (order-0 huff0
// cannot see that), which its first zstdSample bytes show: the whole plane is tried only if the
// sample beats the best ratio so far, which saves most of zstd's cost on weights.
const (
	minBlockGain = 64
	zstdGain     = 32
	zstdSample   = 8 << 10
)

// Segment transforms.
const (
	transformNone   = 0
	transformRotate = 1
)

// Compress returns the compressed frame of raw and true when the frame saves at least minSaving
// (a fraction of len(raw), e.g. 0.10) of the bytes; otherwise nil and false. elemSize is the width
// of the byte planes: 1, 2 or 4 (anything else is treated as 1); use Header.ElemSize. Compression
// runs on all cores (GOMAXPROCS).
func Compress(raw []byte, elemSize int, minSaving float64) ([]byte, bool) {
	if len(raw) == 0 {
		return nil, false
	}
	frame, err := compress(raw, elemSize, defaultSegElems, runtime.GOMAXPROCS(0))
	if err != nil {
		return nil, false
	}
	if !(1-float64(len(frame))/float64(len(raw)) >= minSaving) {
		return nil, false
	}
	return frame, true
}

// segOut is one compressed segment.
type segOut struct {
	crc     uint32
	rot     bool
	methods [4]method
	lens    [4]int
	payload []byte
}

// encState is one compressing goroutine's scratch, pooled across calls: the huff0 tables, the
// planes (plain and rotated), and a zstd encoder (its match tables are most of its cost) with its
// output buffer.
type encState struct {
	huff   huff0.Scratch
	planes [2][4][]byte
	zenc   *zstd.Encoder
	zbuf   []byte
}

var encPool = sync.Pool{New: func() any { return new(encState) }}

func compress(raw []byte, elemSize, segElems, workers int) ([]byte, error) {
	es := elemSize
	if es != 2 && es != 4 {
		es = 1
	}
	n := len(raw) / es
	nseg := (n + segElems - 1) / segElems
	segs := make([]segOut, nseg)
	get := func() *encState { return encPool.Get().(*encState) }
	put := func(st *encState) { encPool.Put(st) }
	err := forEachPooled(nseg, workers, get, put, func(st *encState, s int) error {
		if st.zenc == nil {
			// Options fixed here: a window of a whole plane block, no checksum (the frame has
			// its own), the fastest level (zstd only wins on planes that repeat themselves).
			z, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1),
				zstd.WithWindowSize(zstdWindow(maxSegElems)), zstd.WithSingleSegment(true), zstd.WithEncoderLevel(zstd.SpeedFastest))
			if err != nil {
				return fmt.Errorf("%w: zstd encoder: %v", ErrInvalid, err)
			}
			st.zenc = z
		}
		lo := s * segElems
		m := min(segElems, n-lo)
		src := raw[lo*es : (lo+m)*es]
		planes := st.split(src, es, m, false, segElems)
		out := &segs[s]
		if es > 1 {
			if rotated := st.split(src, es, m, true, segElems); cost(rotated) < cost(planes) {
				planes, out.rot = rotated, true
			}
		}
		for p, plane := range planes {
			before := len(out.payload)
			out.methods[p], out.payload = encodePlane(out.payload, plane, st)
			out.lens[p] = len(out.payload) - before
		}
		out.crc = CRC32C(out.payload)
		return nil
	})
	if err != nil {
		return nil, err
	}

	entry := 5 + 5*es
	size := frameFixed + nseg*entry + 4
	for _, s := range segs {
		size += len(s.payload)
	}
	frame := make([]byte, frameFixed, size)
	copy(frame, frameMagic)
	binary.LittleEndian.PutUint64(frame[8:], uint64(len(raw)))
	frame[16] = byte(es)
	copy(frame[17:20], raw[n*es:])
	binary.LittleEndian.PutUint32(frame[20:], uint32(segElems))
	for _, s := range segs {
		frame = binary.LittleEndian.AppendUint32(frame, s.crc)
		if s.rot {
			frame = append(frame, transformRotate)
		} else {
			frame = append(frame, transformNone)
		}
		for p := range es {
			frame = append(frame, byte(s.methods[p]))
			frame = binary.LittleEndian.AppendUint32(frame, uint32(s.lens[p]))
		}
	}
	frame = binary.LittleEndian.AppendUint32(frame, CRC32C(frame))
	for _, s := range segs {
		frame = append(frame, s.payload...)
	}
	return frame, nil
}

// encodePlane appends the smallest coding of plane to dst.
func encodePlane(dst, plane []byte, st *encState) (method, []byte) {
	if allSame(plane) {
		return methodRLE, append(dst, plane[0])
	}
	if len(plane) < 64 { // too short for a code table to pay off
		return methodRaw, append(dst, plane...)
	}
	best, bestLen := methodRaw, len(plane)-len(plane)/minBlockGain
	st.huff.Reuse = huff0.ReusePolicyNone
	h, _, err := huff0.Compress4X(plane, &st.huff)
	if err == nil && len(h) < bestLen {
		best, bestLen = methodHuff0, len(h)
	}
	if best == methodHuff0 {
		bestLen -= bestLen / zstdGain
	}
	sample := plane[:min(len(plane), zstdSample)]
	st.zbuf = st.zenc.EncodeAll(sample, st.zbuf[:0])
	if len(st.zbuf)*len(plane) < bestLen*len(sample) {
		if len(sample) < len(plane) {
			st.zbuf = st.zenc.EncodeAll(plane, st.zbuf[:0])
		}
		if len(st.zbuf) < bestLen {
			return methodZstd, append(dst, st.zbuf...)
		}
	}
	switch best {
	case methodHuff0:
		return methodHuff0, append(dst, h...)
	default:
		return methodRaw, append(dst, plane...)
	}
}

// split returns the planes of src (m elements of es bytes), plain or rotated, in st's buffers.
func (st *encState) split(src []byte, es, m int, rot bool, segElems int) [][]byte {
	v := 0
	if rot {
		v = 1
	}
	planes := st.planes[v][:es]
	for p := range planes {
		if cap(planes[p]) < m {
			planes[p] = make([]byte, segElems)
		}
		planes[p] = planes[p][:m]
	}
	split(planes, src, m, rot)
	return planes
}

// cost estimates the coded size of planes in bits: the sum of their order-0 entropies.
func cost(planes [][]byte) float64 {
	bits := 0.0
	for _, p := range planes {
		var hist [256]int
		for _, c := range p {
			hist[c]++
		}
		n := float64(len(p))
		for _, h := range hist {
			if h > 0 {
				bits -= float64(h) * math.Log2(float64(h)/n)
			}
		}
	}
	return bits
}

// allSame reports whether b is one byte repeated (b non-empty).
func allSame(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	c := b[0]
	for _, x := range b {
		if x != c {
			return false
		}
	}
	return true
}

// zstdWindow is the smallest valid zstd window (a power of two) that holds a whole plane block.
func zstdWindow(segElems int) int {
	w := zstd.MinWindowSize
	for w < segElems {
		w *= 2
	}
	return w
}

// frameInfo is a frame header and segment table, validated.
type frameInfo struct {
	rawSize  int
	es       int
	tail     []byte
	segElems int
	elems    int // whole elements: rawSize / es
	segs     []segInfo
	payload  []byte
}

type segInfo struct {
	off, size int // of the segment's payload within frameInfo.payload
	crc       uint32
	rot       bool
	methods   [4]method
	lens      [4]int
}

// DecompressedSize returns the raw size a frame decodes to, after checking the frame's header and
// segment table (magic, sizes, checksum). The size comes from the frame: a caller that knows how
// big the blob should be must compare before allocating (a tiny frame of repeated bytes may
// legitimately claim gigabytes).
func DecompressedSize(frame []byte) (int, error) {
	fi, err := parseFrame(frame, true)
	if err != nil {
		return 0, err
	}
	return fi.rawSize, nil
}

// parseFrame validates a frame's header and segment table; verify false skips the table's checksum
// (for the fuzzer).
func parseFrame(frame []byte, verify bool) (frameInfo, error) {
	if len(frame) < frameFixed+4 {
		return frameInfo{}, fmt.Errorf("%w: frame of %d bytes is shorter than its %d-byte header", ErrCorrupt, len(frame), frameFixed+4)
	}
	if string(frame[:len(frameMagic)]) != frameMagic {
		return frameInfo{}, fmt.Errorf("%w: bad frame magic %q, want %q", ErrCorrupt, frame[:len(frameMagic)], frameMagic)
	}
	raw := binary.LittleEndian.Uint64(frame[8:])
	es := int(frame[16])
	se := binary.LittleEndian.Uint32(frame[20:])
	if es != 1 && es != 2 && es != 4 {
		return frameInfo{}, fmt.Errorf("%w: frame element size %d (want 1, 2 or 4)", ErrCorrupt, es)
	}
	if se < minSegElems || se > maxSegElems {
		return frameInfo{}, fmt.Errorf("%w: frame segment of %d elements (want %d .. %d)", ErrCorrupt, se, minSegElems, maxSegElems)
	}
	if raw > math.MaxInt {
		return frameInfo{}, fmt.Errorf("%w: frame raw size %d does not fit in memory", ErrCorrupt, raw)
	}
	elems := raw / uint64(es)
	nseg := (elems + uint64(se) - 1) / uint64(se)
	entry := uint64(5 + 5*es)
	if nseg > uint64(len(frame)-frameFixed-4)/entry {
		return frameInfo{}, fmt.Errorf("%w: frame raw size %d needs %d segments, the %d-byte frame cannot hold their table (truncated, or a wrong size)",
			ErrCorrupt, raw, nseg, len(frame))
	}
	tableEnd := frameFixed + int(nseg*entry)
	if got, want := CRC32C(frame[:tableEnd]), binary.LittleEndian.Uint32(frame[tableEnd:]); verify && got != want {
		return frameInfo{}, fmt.Errorf("%w: frame header checksum %08x, stored %08x", ErrCorrupt, got, want)
	}
	tailLen := int(raw % uint64(es))
	if nonZero(frame[17+tailLen:20]) >= 0 {
		return frameInfo{}, fmt.Errorf("%w: frame tail padding is not zero", ErrCorrupt)
	}
	fi := frameInfo{
		rawSize: int(raw), es: es, tail: frame[17 : 17+tailLen], segElems: int(se), elems: int(elems),
		segs: make([]segInfo, nseg), payload: frame[tableEnd+4:],
	}
	t := frame[frameFixed:tableEnd]
	off := 0
	for s := range fi.segs {
		seg := &fi.segs[s]
		m := min(fi.segElems, fi.elems-s*fi.segElems)
		seg.off = off
		seg.crc = binary.LittleEndian.Uint32(t)
		switch tr := t[4]; {
		case tr == transformRotate && es > 1:
			seg.rot = true
		case tr != transformNone:
			return frameInfo{}, fmt.Errorf("%w: segment %d: transform %d for %d-byte elements", ErrCorrupt, s, tr, es)
		}
		t = t[5:]
		for p := range es {
			meth, n := method(t[0]), int(binary.LittleEndian.Uint32(t[1:]))
			t = t[5:]
			var ok bool
			switch meth {
			case methodRaw:
				ok = n == m
			case methodRLE:
				ok = n == 1
			case methodHuff0, methodZstd:
				ok = n > 0 && n <= m
			default:
				return frameInfo{}, fmt.Errorf("%w: segment %d plane %d: unknown method %d", ErrCorrupt, s, p, meth)
			}
			if !ok {
				return frameInfo{}, fmt.Errorf("%w: segment %d plane %d: method %d with %d bytes for a %d-byte plane", ErrCorrupt, s, p, meth, n, m)
			}
			if n > len(fi.payload)-off-seg.size {
				return frameInfo{}, fmt.Errorf("%w: segment %d plane %d: %d bytes run past the %d-byte payload (truncated?)",
					ErrCorrupt, s, p, n, len(fi.payload))
			}
			seg.methods[p], seg.lens[p] = meth, n
			seg.size += n
		}
		off += seg.size // stays ≤ len(fi.payload)
	}
	if off != len(fi.payload) {
		return frameInfo{}, fmt.Errorf("%w: frame payload is %d bytes, its table describes %d", ErrCorrupt, len(fi.payload), off)
	}
	return fi, nil
}

// Decompress decodes frame into dst, which must be exactly DecompressedSize(frame) bytes long.
// Segments decode in parallel on up to GOMAXPROCS goroutines; each verifies its CRC32C first. On an
// error dst holds partial output.
func Decompress(dst, frame []byte) error {
	return decompress(dst, frame, runtime.GOMAXPROCS(0), true)
}

// decState is one decoding goroutine's scratch, pooled across calls: the huff0 table and decode
// buffers, one buffer per plane, and a zstd decoder made on first need.
type decState struct {
	huff   *huff0.Scratch
	zdec   *zstd.Decoder
	planes [4][]byte
}

var decPool = sync.Pool{New: func() any { return &decState{huff: &huff0.Scratch{}} }}

// decompress is Decompress on at most workers goroutines; verify false skips the checksums (only
// the fuzzer does that, to reach the table checks and the decoders with damaged data).
func decompress(dst, frame []byte, workers int, verify bool) error {
	fi, err := parseFrame(frame, verify)
	if err != nil {
		return err
	}
	if len(dst) != fi.rawSize {
		return fmt.Errorf("%w: Decompress into %d bytes, the frame holds %d", ErrInvalid, len(dst), fi.rawSize)
	}
	copy(dst[fi.elems*fi.es:], fi.tail)
	get := func() *decState { return decPool.Get().(*decState) }
	put := func(st *decState) { decPool.Put(st) }
	return forEachPooled(len(fi.segs), workers, get, put, func(st *decState, s int) error {
		return decodeSegment(dst, &fi, s, st, verify)
	})
}

func decodeSegment(dst []byte, fi *frameInfo, s int, st *decState, verify bool) error {
	seg := &fi.segs[s]
	lo := s * fi.segElems
	m := min(fi.segElems, fi.elems-lo)
	out := dst[lo*fi.es : (lo+m)*fi.es]
	body := fi.payload[seg.off : seg.off+seg.size]
	if verify {
		if got := CRC32C(body); got != seg.crc {
			return fmt.Errorf("%w: segment %d checksum %08x, stored %08x", ErrCorrupt, s, got, seg.crc)
		}
	}
	var planes [4][]byte
	for p := range fi.es {
		blk := body[:seg.lens[p]]
		body = body[seg.lens[p]:]
		if seg.methods[p] == methodRaw {
			planes[p] = blk
			continue
		}
		target := out // one plane: decode in place
		if fi.es > 1 {
			if cap(st.planes[p]) < m {
				st.planes[p] = make([]byte, max(m, fi.segElems))
			}
			target = st.planes[p][:m]
		}
		if err := decodePlane(target, blk, seg.methods[p], st); err != nil {
			return fmt.Errorf("%w: segment %d plane %d: %v", ErrCorrupt, s, p, err)
		}
		planes[p] = target
	}
	if fi.es > 1 || seg.methods[0] == methodRaw {
		interleave(out, planes[:fi.es], m, seg.rot)
	}
	return nil
}

// decodePlane decodes one non-raw block into target, which it must fill exactly.
func decodePlane(target, blk []byte, meth method, st *decState) error {
	switch meth {
	case methodRLE:
		fill(target, blk[0])
		return nil
	case methodHuff0:
		hs, rest, err := huff0.ReadTable(blk, st.huff)
		if err != nil {
			return fmt.Errorf("huff0 table: %v", err)
		}
		st.huff = hs
		got, err := hs.Decoder().Decompress4X(target[:0:len(target)], rest)
		if err != nil {
			return fmt.Errorf("huff0: %v", err)
		}
		return sameBytes(target, got)
	case methodZstd:
		if st.zdec == nil {
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
				zstd.WithDecoderMaxMemory(maxSegElems), zstd.IgnoreChecksum(true))
			if err != nil {
				return fmt.Errorf("zstd decoder: %v", err)
			}
			st.zdec = d
		}
		got, err := st.zdec.DecodeAll(blk, target[:0:len(target)])
		if err != nil {
			return fmt.Errorf("zstd: %v", err)
		}
		return sameBytes(target, got)
	}
	return fmt.Errorf("method %d", meth)
}

// sameBytes checks that a decoder filled target exactly (got is its output).
func sameBytes(target, got []byte) error {
	if len(got) != len(target) {
		return fmt.Errorf("decoded %d bytes, want %d", len(got), len(target))
	}
	if len(got) > 0 && &got[0] != &target[0] {
		copy(target, got)
	}
	return nil
}

func fill(b []byte, c byte) {
	if len(b) == 0 {
		return
	}
	b[0] = c
	for i := 1; i < len(b); i *= 2 {
		copy(b[i:], b[:i])
	}
}

// forEachPooled runs fn(st, i) for i in [0, n) on up to workers goroutines, each with a state
// from get that it gives back with put; it stops at the first error and returns it.
func forEachPooled[S any](n, workers int, get func() *S, put func(*S), fn func(*S, int) error) error {
	workers = max(1, min(workers, n))
	if n == 0 {
		return nil
	}
	if workers == 1 {
		st := get()
		defer put(st)
		for i := range n {
			if err := fn(st, i); err != nil {
				return err
			}
		}
		return nil
	}
	var next atomic.Int64
	var failed atomic.Bool
	var g errgroup.Group
	for range workers {
		g.Go(func() error {
			st := get()
			defer put(st)
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := fn(st, i); err != nil {
					failed.Store(true)
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}
