package engine

import (
	"context"
	"testing"
)

// BenchmarkDecodeStep times one decode step of the tiny fixtures at 1 thread, where the per-op
// overhead of the compute seam (and the garbage of a step's activations) is visible, not hidden
// behind weight reading as in a full-size model: go test ./engine -run XXX -bench DecodeStep.
func BenchmarkDecodeStep(b *testing.B) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		b.Run(name, func(b *testing.B) {
			f := openFixture(b, name)
			m, err := Load(f.ckpt, newCPU(b, 1), Options{})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			var seqs []*Sequence
			for i := 0; i < b.N; i++ {
				if i%64 == 0 { // keep the cache short: every 64 steps a new sequence
					b.StopTimer()
					if seqs, err = m.Start(ctx, [][]int{{5, 6, 7, 8, 9, 10, 11, 12}}); err != nil {
						b.Fatal(err)
					}
					if _, err := m.Step(ctx, seqs, false); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				seqs[0].Pending = append(seqs[0].Pending[:0], 7)
				if _, err := m.Step(ctx, seqs, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
