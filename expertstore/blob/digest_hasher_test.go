package blob

import "testing"

func TestHasherMatchesSum(t *testing.T) {
	b := make([]byte, 3<<20+17)
	for i := range b {
		b[i] = byte(i * 31)
	}
	for _, chunk := range []int{1, 1000, 64 << 10, 1 << 20, len(b)} {
		h := NewHasher()
		for off := 0; off < len(b); off += chunk {
			h.Write(b[off:min(off+chunk, len(b))])
		}
		if got, want := h.Digest(), Sum(b); got != want {
			t.Fatalf("chunk %d: Hasher %s, Sum %s", chunk, got, want)
		}
	}
}
