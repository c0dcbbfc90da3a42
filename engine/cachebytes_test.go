package engine

import (
	"context"
	"testing"
)

// heldBytes is what s keeps in its caches.
func heldBytes(s *Sequence) int64 {
	var n int64
	for _, c := range s.kv {
		n += int64(len(c.k)+len(c.v)) * 4
	}
	if e := s.enc; e != nil {
		n += int64(len(e.hidden))*4 + int64(len(e.mask))
		for _, c := range e.crossK {
			n += int64(len(c.k)+len(c.v)) * 4
		}
	}
	return n
}

// TestSequenceBytes: Info.SequenceBytes is what a sequence holds once it has generated maxTokens.
func TestSequenceBytes(t *testing.T) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			f := openFixture(t, name)
			m, err := Load(f.ckpt, newCPU(t, 2), Options{})
			if err != nil {
				t.Fatal(err)
			}
			const maxTokens = 4
			prompt := []int{3, 4, 5, 6, 7}
			seqs, err := m.Start(context.Background(), [][]int{prompt})
			if err != nil {
				t.Fatal(err)
			}
			// maxTokens Steps sample maxTokens tokens; the last is never fed.
			for i := range maxTokens {
				if _, err := m.Step(context.Background(), seqs, false); err != nil {
					t.Fatal(err)
				}
				if i < maxTokens-1 {
					seqs[0].Pending = append(seqs[0].Pending, 9)
				}
			}
			if got, want := heldBytes(seqs[0]), m.Info().SequenceBytes(len(prompt), maxTokens); got != want || want == 0 {
				t.Errorf("the sequence holds %d bytes, SequenceBytes says %d", got, want)
			}
		})
	}
}
