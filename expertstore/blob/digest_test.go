package blob

import (
	"errors"
	"testing"
)

func TestDigestRoundTrip(t *testing.T) {
	for _, give := range [][]byte{nil, []byte("a"), randomBytes(1000, 1)} {
		d := Sum(give)
		s := d.String()
		if len(s) != 32 {
			t.Fatalf("String() = %q, want 32 chars", s)
		}
		got, err := ParseDigest(s)
		if err != nil || got != d {
			t.Errorf("ParseDigest(%q) = %v, %v; want %v", s, got, err, d)
		}
		if d.IsZero() {
			t.Errorf("Sum(%d bytes) is zero", len(give))
		}
	}
	if !(Digest{}).IsZero() {
		t.Error("Digest{}.IsZero() = false")
	}
}

// The XXH3-128 of the empty input (seed 0) in the reference implementation is
// 99aa06d3014798d86001c324468d497f: pins the byte order (high half first, big-endian) that other
// implementations must reproduce.
func TestDigestKnownValue(t *testing.T) {
	if got, want := Sum(nil).String(), "99aa06d3014798d86001c324468d497f"; got != want {
		t.Errorf("Sum(\"\") = %s, want %s", got, want)
	}
}

func TestParseDigestErrors(t *testing.T) {
	tests := []struct {
		give string
		want string
	}{
		{"", "0 characters"},
		{"99aa06d3014798d86001c324468d497", "31 characters"},
		{"99aa06d3014798d86001c324468d497f0", "33 characters"},
		{"99AA06D3014798D86001C324468D497F", `'A' at 2`},
		{"99aa06d3014798d86001c324468d497g", `'g' at 31`},
		{"99aa06d3014798d86001c324468d49 f", `' ' at 30`},
	}
	for _, tt := range tests {
		_, err := ParseDigest(tt.give)
		if !errors.Is(err, ErrDigest) || !contains(err, tt.want) {
			t.Errorf("ParseDigest(%q) error = %v, want ErrDigest containing %q", tt.give, err, tt.want)
		}
	}
}

func TestSumBitFlip(t *testing.T) {
	b := randomBytes(4096, 2)
	d := Sum(b)
	for _, bit := range []int{0, 7, 8*2048 + 3, 8*4096 - 1} {
		b[bit/8] ^= 1 << (bit % 8)
		if Sum(b) == d {
			t.Errorf("flipping bit %d left the digest unchanged", bit)
		}
		b[bit/8] ^= 1 << (bit % 8)
	}
	if Sum(b) != d {
		t.Error("Sum is not deterministic")
	}
}
