package blob

import (
	"encoding/binary"
	"math/bits"
)

// Hasher computes the Digest of a buffer whose bytes land in order, as a fetch writes a blob
// straight into its destination: Filled(n) says bytes [0, n) are final, and every whole 1 KiB
// block among them is hashed there and then, while it is still in cache, without copying it.
//
// It is XXH3-128's long-input loop (the stripes, blocks and scrambles of the xxHash spec, default
// secret, seed 0), written here because the streaming Hasher of zeebo/xxh3 (whose one-shot hash
// Sum calls) copies every byte after its first Write into a 1 KiB buffer before hashing it: 44 GB/s
// against the one-shot's 116 on a hot 128 KiB piece (AMD EPYC Zen 5), and the copy was 7% of a fetch's
// receiving CPU (docs/BENCHMARKS.md, issue 16 part 1). Upstream removed the copy (zeebo/xxh3 PR
// #30) after v1.1.0, the newest release on the module proxy; a release with it can replace this.
// The tests check Digest against Sum for every length class, and each kernel against the generic
// loop.
type Hasher struct {
	buf    []byte
	acc    [8]uint64
	done   int // blocks accumulated
	blocks int // blocks the long loop accumulates in whole: (len-1)/1024, the rest is the tail's
}

const (
	stripeLen    = 64
	blockLen     = 1024 // 16 stripes: stripe s is keyed by the secret from its byte 8s
	midSizeMax   = 240  // up to here XXH3 hashes another way (Sum does it)
	prime32One   = 0x9E3779B1
	prime32Two   = 0x85EBCA77
	prime32Three = 0xC2B2AE3D
	prime64One   = 0x9E3779B185EBCA87
	prime64Two   = 0xC2B2AE3D27D4EB4F
	prime64Three = 0x165667B19E3779F9
	prime64Four  = 0x85EBCA77C2B2AE63
	prime64Five  = 0x27D4EB2F165667C5
)

// xxh3Secret is XXH3's default secret (kSecret in the xxHash spec).
var xxh3Secret = [192]byte{
	0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
	0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
	0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
	0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
	0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
	0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
	0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
	0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
	0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
	0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
	0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
	0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
}

// NewHasher returns a Hasher of buf, none of it filled yet.
func NewHasher(buf []byte) *Hasher {
	h := &Hasher{buf: buf, acc: [8]uint64{prime32Three, prime64One, prime64Two, prime64Three, prime64Four, prime32Two, prime64Five, prime32One}}
	if len(buf) > midSizeMax {
		h.blocks = (len(buf) - 1) / blockLen
	}
	return h
}

// Filled says that bytes [0, n) of the buffer are final; it hashes the whole blocks among them not
// hashed yet (none when n is not past the last call's).
func (h *Hasher) Filled(n int) {
	if end := min(n/blockLen, h.blocks); end > h.done {
		accumBlocks(&h.acc, h.buf[h.done*blockLen:end*blockLen])
		h.done = end
	}
}

// Digest is the digest of the whole buffer, which must be filled.
func (h *Hasher) Digest() Digest {
	n := len(h.buf)
	if n <= midSizeMax {
		return Sum(h.buf)
	}
	h.Filled(n)
	// The tail: the last block's whole stripes, then the buffer's last 64 bytes with the secret
	// 7 bytes short of its last stripe's place.
	acc := h.acc
	tail := h.buf[h.blocks*blockLen:]
	for s := 0; s < (len(tail)-1)/stripeLen; s++ {
		accumStripe(&acc, tail[s*stripeLen:], xxh3Secret[s*8:])
	}
	accumStripe(&acc, h.buf[n-stripeLen:], xxh3Secret[len(xxh3Secret)-stripeLen-7:])
	lo := mergeAccs(&acc, xxh3Secret[11:], uint64(n)*prime64One)
	hi := mergeAccs(&acc, xxh3Secret[len(xxh3Secret)-stripeLen-11:], ^(uint64(n) * prime64Two))
	var d Digest
	binary.BigEndian.PutUint64(d[:8], hi)
	binary.BigEndian.PutUint64(d[8:], lo)
	return d
}

// accumStripe adds one 64-byte stripe of p, keyed by the secret bytes sec, into acc.
func accumStripe(acc *[8]uint64, p, sec []byte) {
	for i := range 8 {
		v := binary.LittleEndian.Uint64(p[8*i:])
		k := v ^ binary.LittleEndian.Uint64(sec[8*i:])
		acc[i^1] += v
		acc[i] += uint64(uint32(k)) * (k >> 32)
	}
}

// accumBlocksGeneric adds whole blocks of p into acc, each its 16 stripes and then a scramble:
// what the assembly does with vectors.
func accumBlocksGeneric(acc *[8]uint64, p []byte) {
	for ; len(p) >= blockLen; p = p[blockLen:] {
		for s := range blockLen / stripeLen {
			accumStripe(acc, p[s*stripeLen:], xxh3Secret[s*8:])
		}
		for i := range acc {
			a := acc[i]
			a ^= a >> 47
			a ^= binary.LittleEndian.Uint64(xxh3Secret[len(xxh3Secret)-stripeLen+8*i:])
			acc[i] = a * prime32One
		}
	}
}

// mergeAccs folds the accumulators into one 64-bit half of the digest: start plus the folded
// 128-bit products of each keyed pair, then XXH3's avalanche.
func mergeAccs(acc *[8]uint64, sec []byte, start uint64) uint64 {
	r := start
	for i := 0; i < 8; i += 2 {
		hi, lo := bits.Mul64(acc[i]^binary.LittleEndian.Uint64(sec[8*i:]), acc[i+1]^binary.LittleEndian.Uint64(sec[8*i+8:]))
		r += hi ^ lo
	}
	r ^= r >> 37
	r *= 0x165667919E3779F9
	return r ^ r>>32
}
