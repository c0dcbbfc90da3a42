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

// TestPassBytes: while a Switch prompt's encoder pass runs, what it holds (its outputs and the
// pass's own activations) is what Info reserves per prompt token beyond the decoder's cache.
func TestPassBytes(t *testing.T) {
	f := openFixture(t, "switch-tiny")
	m, err := Load(f.ckpt, newCPU(t, 2), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sw := m.(*Switch)
	prompts := [][]int{{3, 4, 5, 6, 7}, {8, 9}}
	j, err := sw.beginEncode(prompts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	held := j.x.Bytes() + j.k.Bytes() + j.v.Bytes()
	for _, o := range j.outs {
		held += o.hidden.Bytes() + o.mask.Bytes()
		for _, c := range o.crossK {
			held += c.k.Bytes() + c.v.Bytes()
		}
	}
	info := m.Info()
	if want := int64(7) * (info.PromptBytesPerToken + info.PassBytesPerToken); held != want || info.PassBytesPerToken == 0 {
		t.Errorf("an encoder pass over 7 prompt tokens holds %d bytes; Info reserves %d (%d per token for the pass)", held, want, info.PassBytesPerToken)
	}
	if got, want := info.AdmitBytes(5, 4), info.SequenceBytes(5, 4)+5*info.PassBytesPerToken; got != want {
		t.Errorf("AdmitBytes(5, 4) = %d, want %d", got, want)
	}
}
