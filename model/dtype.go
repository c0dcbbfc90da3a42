package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// DType is a safetensors element type, spelled as in the safetensors header.
type DType string

// The element types this package reads and writes.
const (
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	F8E4M3 DType = "F8_E4M3" // float8 e4m3fn: bias 7, no infinities, NaN = S.1111.111
	F8E5M2 DType = "F8_E5M2" // float8 e5m2: bias 15, IEEE-like (inf and NaN)
	I64    DType = "I64"
	I32    DType = "I32"
	U8     DType = "U8"
)

// Size returns the number of bytes per element, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	case F8E4M3, F8E5M2, U8:
		return 1
	case I64:
		return 8
	}
	return 0
}

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool {
	switch d {
	case F32, F16, BF16, F8E4M3, F8E5M2:
		return true
	}
	return false
}

// ParseDType returns the DType spelled s exactly as in a safetensors header ("F32", "BF16", ...).
func ParseDType(s string) (DType, error) {
	d := DType(s)
	if d.Size() == 0 {
		return "", fmt.Errorf("%w %q (supported: F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, U8)", ErrUnknownDType, s)
	}
	return d, nil
}

// hostLittleEndian reports whether the machine stores integers little-endian (safetensors data is).
func hostLittleEndian() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}

// ToFloat32 decodes src, little-endian elements of type dt, into dst. len(src) must be exactly
// len(dst)*dt.Size(). Integer types are converted to the nearest float32.
func ToFloat32(dst []float32, src []byte, dt DType) error {
	size := dt.Size()
	if size == 0 {
		return fmt.Errorf("model: ToFloat32: %w %q", ErrUnknownDType, string(dt))
	}
	if len(src) != len(dst)*size {
		return fmt.Errorf("%w: ToFloat32: dst has %d elements, src has %d bytes (%s is %d bytes per element)",
			ErrShapeMismatch, len(dst), len(src), dt, size)
	}
	le := binary.LittleEndian
	switch dt {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToFloat32(le.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToFloat32(le.Uint16(src[2*i:]))
		}
	case F8E4M3, F8E5M2:
		var table [256]float32
		for b := range table {
			if dt == F8E4M3 {
				table[b] = F8E4M3ToFloat32(uint8(b))
			} else {
				table[b] = F8E5M2ToFloat32(uint8(b))
			}
		}
		for i, b := range src {
			dst[i] = table[b]
		}
	case I64:
		for i := range dst {
			dst[i] = float32(int64(le.Uint64(src[8*i:])))
		}
	case I32:
		for i := range dst {
			dst[i] = float32(int32(le.Uint32(src[4*i:])))
		}
	case U8:
		for i, b := range src {
			dst[i] = float32(b)
		}
	}
	return nil
}

// FromFloat32 encodes src into dst as little-endian elements of type dt (F32, F16 or BF16, rounding
// to nearest even). len(dst) must be exactly len(src)*dt.Size().
func FromFloat32(dst []byte, src []float32, dt DType) error {
	size := dt.Size()
	if size == 0 {
		return fmt.Errorf("model: FromFloat32: %w %q", ErrUnknownDType, string(dt))
	}
	if len(dst) != len(src)*size {
		return fmt.Errorf("%w: FromFloat32: src has %d elements, dst has %d bytes (%s is %d bytes per element)",
			ErrShapeMismatch, len(src), len(dst), dt, size)
	}
	le := binary.LittleEndian
	switch dt {
	case F32:
		for i, f := range src {
			le.PutUint32(dst[4*i:], math.Float32bits(f))
		}
	case F16:
		for i, f := range src {
			le.PutUint16(dst[2*i:], Float32ToF16(f))
		}
	case BF16:
		for i, f := range src {
			le.PutUint16(dst[2*i:], Float32ToBF16(f))
		}
	default:
		return fmt.Errorf("%w: FromFloat32 to %s (only F32, F16, BF16)", ErrUnsupported, dt)
	}
	return nil
}

// BF16ToFloat32 widens a bfloat16 bit pattern to float32 (exact).
func BF16ToFloat32(b uint16) float32 {
	return math.Float32frombits(uint32(b) << 16)
}

// Float32ToBF16 rounds f to the nearest bfloat16 (ties to even). NaN stays NaN.
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: truncate and force a quiet NaN
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// F16ToFloat32 widens an IEEE 754 half-precision bit pattern to float32 (exact, subnormals included).
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch exp {
	case 0x1f: // inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0: // zero or subnormal: mant * 2^-24, exact in float32
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// Float32ToF16 rounds f to the nearest IEEE 754 half (ties to even), producing subnormals,
// infinities on overflow, and a quiet NaN for NaN.
func Float32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e >= 1 { // normal half
		q := mant >> 13
		rem := mant & 0x1fff
		if rem > 0x1000 || (rem == 0x1000 && q&1 == 1) {
			q++ // a carry into the exponent is correct (may reach inf)
		}
		return sign | (uint16(e)<<10 + uint16(q))
	}
	if exp == 0 { // float32 zero or subnormal: far below half's smallest subnormal
		return sign
	}
	// Half subnormal: value = m * 2^(e-24) with m the 24-bit significand; units of 2^-24.
	m := mant | 0x800000
	shift := uint(14 - e)
	if shift > 24 {
		return sign
	}
	q := m >> shift
	rem := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || (rem == half && q&1 == 1) {
		q++
	}
	return sign | uint16(q)
}

// F8E4M3ToFloat32 decodes a float8 e4m3fn value: bias 7, subnormals, no infinities, and NaN for
// S.1111.111 (0x7F, 0xFF). The largest finite value is 0x7E = 448.
func F8E4M3ToFloat32(v uint8) float32 {
	e := uint32(v>>3) & 0xf
	m := uint32(v) & 7
	var f float32
	switch {
	case e == 0xf && m == 7:
		f = float32(math.NaN())
	case e == 0:
		f = float32(m) / 512 // m/8 * 2^-6
	default:
		f = math.Float32frombits((e+120)<<23 | m<<20)
	}
	if v&0x80 != 0 {
		f = -f
	}
	return f
}

// F8E5M2ToFloat32 decodes a float8 e5m2 value: bias 15, IEEE-like (0x7C = +Inf, 0x7D..0x7F NaN).
// The largest finite value is 0x7B = 57344.
func F8E5M2ToFloat32(v uint8) float32 {
	e := uint32(v>>2) & 0x1f
	m := uint32(v) & 3
	var f float32
	switch {
	case e == 0x1f && m == 0:
		f = float32(math.Inf(1))
	case e == 0x1f:
		f = float32(math.NaN())
	case e == 0:
		f = float32(m) / 65536 // m/4 * 2^-14
	default:
		f = math.Float32frombits((e+112)<<23 | m<<21)
	}
	if v&0x80 != 0 {
		f = -f
	}
	return f
}
