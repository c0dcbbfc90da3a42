package engine

import (
	"context"
	"testing"
)

// heldBytes is what s keeps in its caches, with their capacity (allocated) or length (used).
func heldBytes(s *Sequence, allocated bool) int64 {
	var n int64
	for _, c := range s.kv {
		if allocated {
			n += c.k.Bytes() + c.v.Bytes()
		} else {
			n += int64(2*c.used) * 4
		}
	}
	if e := s.enc; e != nil {
		n += e.hidden.Bytes() + e.mask.Bytes()
		for _, c := range e.crossK {
			n += c.k.Bytes() + c.v.Bytes()
		}
	}
	return n
}

// TestSequenceBytes: Info.SequenceBytes is what a sequence holds once it has generated maxTokens,
// and what it has allocated when Reserve sized it for CacheTokens first (no Step reallocates).
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
			info := m.Info()
			seqs[0].Reserve(info.CacheTokens(len(prompt), maxTokens))
			reserved := heldBytes(seqs[0], true)
			// maxTokens Steps sample maxTokens tokens; the last is never fed.
			for i := range maxTokens {
				if _, err := m.Step(context.Background(), seqs, false); err != nil {
					t.Fatal(err)
				}
				if i < maxTokens-1 {
					seqs[0].Pending = append(seqs[0].Pending, 9)
				}
			}
			want := info.SequenceBytes(len(prompt), maxTokens)
			if got := heldBytes(seqs[0], false); got != want || want == 0 {
				t.Errorf("the sequence holds %d bytes, SequenceBytes says %d", got, want)
			}
			if got := heldBytes(seqs[0], true); got != reserved || got != want {
				t.Errorf("the sequence allocated %d bytes after its Steps, %d after Reserve; SequenceBytes says %d", got, reserved, want)
			}
		})
	}
}
