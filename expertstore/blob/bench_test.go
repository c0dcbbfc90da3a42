package blob

import (
	"fmt"
	"testing"
)

// benchBlob is a 16 MiB tensor of N(0, 0.02) weights of dtype dt.
func benchBlob(dt string) ([]byte, int) {
	const size = 16 << 20
	switch dt {
	case "F32":
		return weights(dt, size/4, 0.02, 7), 4
	default:
		return weights(dt, size/2, 0.02, 7), 2
	}
}

// go test ./expertstore/blob -run XXX -bench . -benchtime 20x
func BenchmarkCompress(b *testing.B) {
	for _, dt := range []string{"BF16", "F32"} {
		raw, es := benchBlob(dt)
		b.Run(dt, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			var frame []byte
			for b.Loop() {
				var ok bool
				frame, ok = Compress(raw, es, 0)
				if !ok {
					b.Fatal("no saving")
				}
			}
			b.ReportMetric(float64(len(frame))/float64(len(raw)), "ratio")
		})
	}
}

func BenchmarkDecompress(b *testing.B) {
	for _, dt := range []string{"BF16", "F32"} {
		raw, es := benchBlob(dt)
		frame, ok := Compress(raw, es, 0)
		if !ok {
			b.Fatal("no saving")
		}
		for _, workers := range []int{1, 0} {
			name := fmt.Sprintf("%s/goroutines=%d", dt, workers)
			if workers == 0 {
				name = dt + "/goroutines=GOMAXPROCS"
			}
			b.Run(name, func(b *testing.B) {
				dst := make([]byte, len(raw))
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					var err error
					if workers == 0 {
						err = Decompress(dst, frame)
					} else {
						err = decompress(dst, frame, workers, true)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(frame))/float64(len(raw)), "ratio")
			})
		}
	}
}

// The per-fetch checks: the digest of the raw blob and the CRC32C of its chunks.
func BenchmarkSum(b *testing.B) {
	raw, _ := benchBlob("BF16")
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		Sum(raw)
	}
}

func BenchmarkChunkCRCs(b *testing.B) {
	raw, _ := benchBlob("BF16")
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		ChunkCRCs(raw, DefaultChunkSize)
	}
}
