package model

import (
	"encoding/binary"
	"math"
	"testing"
)

func TestDTypeSizeAndParse(t *testing.T) {
	tests := []struct {
		give     string
		want     int
		wantFail bool
	}{
		{"F32", 4, false}, {"F16", 2, false}, {"BF16", 2, false}, {"F8_E4M3", 1, false},
		{"F8_E5M2", 1, false}, {"I64", 8, false}, {"I32", 4, false}, {"U8", 1, false},
		{"F64", 0, true}, {"f32", 0, true}, {"", 0, true}, {"BOOL", 0, true},
	}
	for _, tt := range tests {
		d, err := ParseDType(tt.give)
		if tt.wantFail {
			if !errorsIs(err, ErrUnknownDType) || !contains(err, `"`+tt.give+`"`) {
				t.Errorf("ParseDType(%q) error = %v, want ErrUnknownDType naming it", tt.give, err)
			}
			if DType(tt.give).Size() != 0 {
				t.Errorf("Size(%q) != 0", tt.give)
			}
			continue
		}
		if err != nil || d.Size() != tt.want {
			t.Errorf("ParseDType(%q) = %v (size %d), %v; want size %d", tt.give, d, d.Size(), err, tt.want)
		}
	}
}

func same(a, b float32) bool {
	if math.IsNaN(float64(a)) || math.IsNaN(float64(b)) {
		return math.IsNaN(float64(a)) && math.IsNaN(float64(b))
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

func TestHalfDecode(t *testing.T) {
	inf := float32(math.Inf(1))
	nan := float32(math.NaN())
	tests := []struct {
		name string
		fn   func(uint16) float32
		give uint16
		want float32
	}{
		{"bf16", BF16ToFloat32, 0x3F80, 1},
		{"bf16", BF16ToFloat32, 0xC000, -2},
		{"bf16", BF16ToFloat32, 0x7F80, inf},
		{"bf16", BF16ToFloat32, 0x7FC0, nan},
		{"bf16", BF16ToFloat32, 0x0001, float32(math.Ldexp(1, -133))},
		{"bf16", BF16ToFloat32, 0x8000, float32(math.Copysign(0, -1))},
		{"f16", F16ToFloat32, 0x3C00, 1},
		{"f16", F16ToFloat32, 0x0001, float32(math.Ldexp(1, -24))},
		{"f16", F16ToFloat32, 0x03FF, float32(math.Ldexp(1023, -24))},
		{"f16", F16ToFloat32, 0x0400, float32(math.Ldexp(1, -14))},
		{"f16", F16ToFloat32, 0x7BFF, 65504},
		{"f16", F16ToFloat32, 0x7C00, inf},
		{"f16", F16ToFloat32, 0xFC00, -inf},
		{"f16", F16ToFloat32, 0x7E00, nan},
		{"f16", F16ToFloat32, 0xC000, -2},
		{"f16", F16ToFloat32, 0x8001, -float32(math.Ldexp(1, -24))},
		{"f16", F16ToFloat32, 0x3555, 0.33325195},
	}
	for _, tt := range tests {
		if got := tt.fn(tt.give); !same(got, tt.want) {
			t.Errorf("%s(%#04x) = %v, want %v", tt.name, tt.give, got, tt.want)
		}
	}
}

func TestHalfEncode(t *testing.T) {
	f := func(bits uint32) float32 { return math.Float32frombits(bits) }
	tests := []struct {
		name string
		fn   func(float32) uint16
		give float32
		want uint16
	}{
		{"bf16", Float32ToBF16, 1, 0x3F80},
		{"bf16", Float32ToBF16, f(0x3F808000), 0x3F80}, // tie → even
		{"bf16", Float32ToBF16, f(0x3F818000), 0x3F82}, // tie → even
		{"bf16", Float32ToBF16, f(0x3F808001), 0x3F81},
		{"bf16", Float32ToBF16, f(0x7F7FFFFF), 0x7F80}, // max float rounds to inf
		{"bf16", Float32ToBF16, float32(math.Inf(-1)), 0xFF80},
		{"f16", Float32ToF16, 1, 0x3C00},
		{"f16", Float32ToF16, 65504, 0x7BFF},
		{"f16", Float32ToF16, 65519.99, 0x7BFF},
		{"f16", Float32ToF16, 65520, 0x7C00},
		{"f16", Float32ToF16, 1e10, 0x7C00},
		{"f16", Float32ToF16, -1e10, 0xFC00},
		{"f16", Float32ToF16, float32(math.Ldexp(1, -24)), 0x0001},
		{"f16", Float32ToF16, float32(math.Ldexp(1, -25)), 0x0000},   // tie → even (0)
		{"f16", Float32ToF16, float32(math.Ldexp(3, -25)), 0x0002},   // tie → even (2)
		{"f16", Float32ToF16, float32(math.Ldexp(1.5, -25)), 0x0001}, // above half
		{"f16", Float32ToF16, float32(math.Ldexp(1023.5, -24)), 0x0400},
		{"f16", Float32ToF16, 1e-10, 0x0000},
		{"f16", Float32ToF16, float32(math.Copysign(0, -1)), 0x8000},
		{"f16", Float32ToF16, float32(1 + math.Ldexp(1, -11)), 0x3C00},
		{"f16", Float32ToF16, float32(1 + math.Ldexp(3, -11)), 0x3C02},
		{"f16", Float32ToF16, f(1), 0x0000}, // float32 subnormal
	}
	for _, tt := range tests {
		if got := tt.fn(tt.give); got != tt.want {
			t.Errorf("%s(%v) = %#04x, want %#04x", tt.name, tt.give, got, tt.want)
		}
	}
	if got := Float32ToF16(float32(math.NaN())); got&0x7C00 != 0x7C00 || got&0x3FF == 0 {
		t.Errorf("Float32ToF16(NaN) = %#04x, not a NaN", got)
	}
	if got := Float32ToBF16(float32(math.NaN())); !math.IsNaN(float64(BF16ToFloat32(got))) {
		t.Errorf("Float32ToBF16(NaN) = %#04x, not a NaN", got)
	}
}

// Every non-NaN half value survives decode → encode unchanged.
func TestHalfRoundTripExhaustive(t *testing.T) {
	for h := range 1 << 16 {
		b := uint16(h)
		if v := F16ToFloat32(b); !math.IsNaN(float64(v)) {
			if got := Float32ToF16(v); got != b {
				t.Fatalf("f16 %#04x → %v → %#04x", b, v, got)
			}
		}
		if v := BF16ToFloat32(b); !math.IsNaN(float64(v)) {
			if got := Float32ToBF16(v); got != b {
				t.Fatalf("bf16 %#04x → %v → %#04x", b, v, got)
			}
		}
	}
}

func TestFloat8Decode(t *testing.T) {
	inf := float32(math.Inf(1))
	nan := float32(math.NaN())
	tests := []struct {
		name string
		fn   func(uint8) float32
		give uint8
		want float32
	}{
		{"e4m3", F8E4M3ToFloat32, 0x38, 1},
		{"e4m3", F8E4M3ToFloat32, 0x7E, 448},
		{"e4m3", F8E4M3ToFloat32, 0xFE, -448},
		{"e4m3", F8E4M3ToFloat32, 0x78, 256},
		{"e4m3", F8E4M3ToFloat32, 0x7F, nan},
		{"e4m3", F8E4M3ToFloat32, 0xFF, nan},
		{"e4m3", F8E4M3ToFloat32, 0x01, float32(math.Ldexp(1, -9))},
		{"e4m3", F8E4M3ToFloat32, 0x07, float32(math.Ldexp(7, -9))},
		{"e4m3", F8E4M3ToFloat32, 0x08, float32(math.Ldexp(1, -6))},
		{"e4m3", F8E4M3ToFloat32, 0x80, float32(math.Copysign(0, -1))},
		{"e4m3", F8E4M3ToFloat32, 0x3C, 1.5},
		{"e5m2", F8E5M2ToFloat32, 0x3C, 1},
		{"e5m2", F8E5M2ToFloat32, 0x7B, 57344},
		{"e5m2", F8E5M2ToFloat32, 0x7C, inf},
		{"e5m2", F8E5M2ToFloat32, 0xFC, -inf},
		{"e5m2", F8E5M2ToFloat32, 0x7D, nan},
		{"e5m2", F8E5M2ToFloat32, 0x01, float32(math.Ldexp(1, -16))},
		{"e5m2", F8E5M2ToFloat32, 0x04, float32(math.Ldexp(1, -14))},
		{"e5m2", F8E5M2ToFloat32, 0xC0, -2},
	}
	for _, tt := range tests {
		if got := tt.fn(tt.give); !same(got, tt.want) {
			t.Errorf("%s(%#02x) = %v, want %v", tt.name, tt.give, got, tt.want)
		}
	}
	// E5M2 is the high byte of an IEEE half.
	for b := range 256 {
		if got, want := F8E5M2ToFloat32(uint8(b)), F16ToFloat32(uint16(b)<<8); !same(got, want) {
			t.Errorf("e5m2 %#02x = %v, half %#04x = %v", b, got, b<<8, want)
		}
	}
}

func TestToFloat32(t *testing.T) {
	le := binary.LittleEndian
	f32 := make([]byte, 8)
	le.PutUint32(f32, math.Float32bits(1.5))
	le.PutUint32(f32[4:], math.Float32bits(-3))
	i64 := make([]byte, 16)
	le.PutUint64(i64, uint64(7))
	neg := int64(-9)
	le.PutUint64(i64[8:], uint64(neg))
	i32 := make([]byte, 8)
	le.PutUint32(i32, 5)
	n32 := int32(-6)
	le.PutUint32(i32[4:], uint32(n32))
	tests := []struct {
		give DType
		src  []byte
		want []float32
	}{
		{F32, f32, []float32{1.5, -3}},
		{F16, []byte{0x00, 0x3C, 0x00, 0xC0}, []float32{1, -2}},
		{BF16, []byte{0x80, 0x3F, 0x00, 0xC0}, []float32{1, -2}},
		{F8E4M3, []byte{0x7E, 0x38}, []float32{448, 1}},
		{F8E5M2, []byte{0x7B, 0x3C}, []float32{57344, 1}},
		{I64, i64, []float32{7, -9}},
		{I32, i32, []float32{5, -6}},
		{U8, []byte{0, 255}, []float32{0, 255}},
	}
	for _, tt := range tests {
		got := make([]float32, len(tt.want))
		if err := ToFloat32(got, tt.src, tt.give); err != nil {
			t.Errorf("%s: %v", tt.give, err)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: got %v, want %v", tt.give, got, tt.want)
				break
			}
		}
		// element count mismatch
		if err := ToFloat32(make([]float32, len(tt.want)+1), tt.src, tt.give); !errorsIs(err, ErrShapeMismatch) {
			t.Errorf("%s: count mismatch error = %v", tt.give, err)
		}
	}
	if err := ToFloat32(make([]float32, 1), make([]byte, 4), "F64"); !errorsIs(err, ErrUnknownDType) {
		t.Errorf("unknown dtype error = %v", err)
	}
}

func TestFromFloat32(t *testing.T) {
	src := []float32{1, -2, 0.5}
	tests := []struct {
		give DType
		want []byte
	}{
		{F32, []byte{0, 0, 0x80, 0x3F, 0, 0, 0, 0xC0, 0, 0, 0, 0x3F}},
		{F16, []byte{0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38}},
		{BF16, []byte{0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F}},
	}
	for _, tt := range tests {
		got := make([]byte, len(tt.want))
		if err := FromFloat32(got, src, tt.give); err != nil {
			t.Fatalf("%s: %v", tt.give, err)
		}
		if string(got) != string(tt.want) {
			t.Errorf("%s: got % x, want % x", tt.give, got, tt.want)
		}
		if err := FromFloat32(got[1:], src, tt.give); !errorsIs(err, ErrShapeMismatch) {
			t.Errorf("%s: short dst error = %v", tt.give, err)
		}
	}
	if err := FromFloat32(make([]byte, 3), src, F8E4M3); !errorsIs(err, ErrUnsupported) {
		t.Errorf("FromFloat32 F8 error = %v, want ErrUnsupported", err)
	}
}
