package blob

import (
	"math/rand/v2"
	"testing"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/cpu"
)

// fillHash hashes b through a Hasher, filled in steps of step bytes (the last one short).
func fillHash(b []byte, step int) Digest {
	h := NewHasher(b)
	for n := step; n < len(b); n += step {
		h.Filled(n)
	}
	return h.Digest()
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

// Every length up to a little past four blocks: the short and mid-size forms (Sum), and every
// size of the long form's tail, whole stripes or not.
func TestHasherEveryLength(t *testing.T) {
	all := randBytes(1, 4*blockLen+2*stripeLen+3)
	for n := 0; n <= len(all); n++ {
		b := all[:n]
		want := Sum(b)
		for _, step := range []int{n + 1, 1, 7, blockLen, blockLen + 1} {
			if got := fillHash(b, step); got != want {
				t.Fatalf("%d bytes filled %d at a time: Hasher %s, Sum %s", n, step, got, want)
			}
		}
	}
}

func TestHasherLarge(t *testing.T) {
	for _, n := range []int{1 << 20, 1<<20 + 1, 3<<20 + 17, 3<<20 - 1} {
		b := randBytes(uint64(n), n)
		want := Sum(b)
		for _, step := range []int{1000, 64 << 10, 128<<10 + 5, 1 << 20, n} {
			if got := fillHash(b, step); got != want {
				t.Fatalf("%d bytes filled %d at a time: Hasher %s, Sum %s", n, step, got, want)
			}
		}
		b[n/2] ^= 1
		if fillHash(b, 64<<10) == want {
			t.Fatalf("%d bytes: a flipped bit kept the digest", n)
		}
	}
}

// A Filled that goes back, or repeats, hashes nothing twice.
func TestHasherFilledBack(t *testing.T) {
	b := randBytes(2, 10*blockLen+100)
	h := NewHasher(b)
	for _, n := range []int{5 * blockLen, 3 * blockLen, 5 * blockLen, 5*blockLen + 10, 0, len(b)} {
		h.Filled(n)
	}
	if got, want := h.Digest(), Sum(b); got != want {
		t.Fatalf("Hasher %s, Sum %s", got, want)
	}
}

// Each vector kernel this CPU runs gives the generic loop's accumulators.
func TestAccumBlocksKernels(t *testing.T) {
	b := randBytes(3, 9*blockLen)
	start := NewHasher(nil).acc
	want := start
	accumBlocksGeneric(&want, b)
	kernels := map[string]func(acc *[8]uint64, p []byte){"dispatch": accumBlocks}
	for name, k := range accumKernels() {
		kernels[name] = k
	}
	for name, k := range kernels {
		got := start
		k(&got, b)
		if got != want {
			t.Errorf("%s: %x, generic %x", name, got, want)
		}
	}
	t.Logf("kernels checked: %d (AVX2 %v, AVX-512F %v)", len(kernels), cpu.X86.HasAVX2, cpu.X86.HasAVX512F)
}

func FuzzHasher(f *testing.F) {
	f.Add([]byte("short"), uint16(1))
	f.Add(randBytes(4, 3000), uint16(100))
	f.Add(randBytes(5, 2049), uint16(1024))
	f.Fuzz(func(t *testing.T, b []byte, step uint16) {
		if got, want := fillHash(b, int(step)+1), Sum(b); got != want {
			t.Fatalf("%d bytes filled %d at a time: Hasher %s, Sum %s", len(b), int(step)+1, got, want)
		}
	})
}

// BenchmarkHasher: a 16 MiB blob hashed as a fetch does, in 128 KiB pieces (fill), and by
// zeebo/xxh3's streaming Hasher, which copies each byte into its buffer first (stream); then one
// hot 128 KiB piece through each vector kernel this CPU runs, and through zeebo/xxh3's one-shot
// Hash128 (the speed to match).
func BenchmarkHasher(b *testing.B) {
	const piece = 128 << 10
	buf := randBytes(6, 16<<20)
	for name, k := range accumKernels() {
		b.Run("hot-"+name, func(b *testing.B) {
			b.SetBytes(piece)
			var acc [8]uint64
			for b.Loop() {
				k(&acc, buf[:piece])
			}
		})
	}
	b.Run("hot-oneshot", func(b *testing.B) {
		b.SetBytes(piece)
		for b.Loop() {
			xxh3.Hash128(buf[:piece])
		}
	})
	b.Run("fill", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			fillHash(buf, piece)
		}
	})
	b.Run("stream", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			h := xxh3.New()
			for p := buf; len(p) > 0; p = p[piece:] {
				h.Write(p[:piece])
			}
			h.Sum128()
		}
	})
}
