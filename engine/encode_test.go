package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/pregate/pregate/compute"
)

// encoded is what a Switch encoder pass gave: per sequence its encoder output, every decoder
// block's cross-attention keys and values, and the tokens greedy decoding then generates.
type encoded struct {
	hidden, cross [][]float32
	tokens        [][]int
	runs          int
}

// encodeInSlices runs an encoder pass over prompts with run (one slice per call until done),
// then decodes greedily.
func encodeInSlices(t *testing.T, m *Switch, prompts [][]int, run func(j *encodeJob) (bool, error)) encoded {
	t.Helper()
	ctx := context.Background()
	j, err := m.beginEncode(prompts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var got encoded
	for left := j.Left(); ; got.runs++ {
		if j.Sequences() != nil {
			t.Fatal("Sequences before the pass is done")
		}
		done, err := run(j)
		if err != nil {
			t.Fatal(err)
		}
		if l := j.Left(); l > left {
			t.Fatalf("Left went from %d to %d", left, l)
		}
		if got.runs > j.tokens*j.phases() {
			t.Fatalf("%d Runs and not done", got.runs)
		}
		left = j.Left()
		if done {
			if left != 0 {
				t.Fatalf("done with Left %d", left)
			}
			break
		}
	}
	seqs := j.Sequences()
	defer func() {
		for _, s := range seqs {
			s.Close()
		}
	}()
	download := func(x compute.Tensor) []float32 {
		h := make([]float32, x.Len())
		if err := m.be.Download(h, x); err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, s := range seqs {
		got.hidden = append(got.hidden, download(s.enc.hidden))
		var cross []float32
		for _, c := range s.enc.crossK {
			cross = append(cross, download(c.k)...)
			cross = append(cross, download(c.v)...)
		}
		got.cross = append(got.cross, cross)
	}
	got.tokens = make([][]int, len(seqs))
	for range 6 {
		logits, err := m.Step(ctx, seqs, false)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range logits {
			tok := compute.ArgMax(l)
			got.tokens[i] = append(got.tokens[i], tok)
			seqs[i].Pending = append(seqs[i].Pending[:0], tok)
		}
	}
	return got
}

// TestEncoderInSlices checks that an encoder pass run in slices of any size, chunks of query rows
// that cross layers and sequences, gives the whole pass's tokens, and its outputs bit for bit when
// the slices are whole layers: with pre-gates (a chunk's pre-gate choices route the same rows at
// the next MoE block) and with an expert capacity small enough to drop tokens (counted in token
// order across chunks). Slices of fewer rows than a layer give the outputs to float32 rounding:
// the CPU backend computes a product of at most 4 rows with another kernel (gemv) than a larger
// one, so a row's sums are ordered by how many rows its product has.
func TestEncoderInSlices(t *testing.T) {
	for _, name := range []string{"switch-tiny", "switch-tiny-pregated"} {
		for _, capacity := range []int{0, 2} {
			f := openFixture(t, name)
			m, err := LoadSwitch(f.ckpt, newCPU(t, 2), Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			if capacity > 0 {
				for i := range m.enc.blocks {
					if b := m.enc.blocks[i].moe; b != nil {
						b.gate.Capacity = capacity
					}
				}
			}
			rng := rand.New(rand.NewPCG(1, uint64(capacity)))
			var prompts [][]int
			for _, n := range []int{13, 1, 22, 5} {
				p := make([]int, n)
				for i := range p {
					p[i] = 1 + rng.IntN(m.info.VocabSize-1)
				}
				prompts = append(prompts, p)
			}
			ctx := context.Background()
			whole := encodeInSlices(t, m, prompts, func(j *encodeJob) (bool, error) { return j.Run(ctx, j.Left()) })
			if whole.runs != 0 {
				t.Fatalf("a whole pass took %d Runs", whole.runs+1)
			}
			type slicing struct {
				name string
				run  func(j *encodeJob) (bool, error)
			}
			var slicings []slicing
			total := 0
			for _, p := range prompts {
				total += len(p)
			}
			for _, rows := range []int{total, 2 * total, 1, 7, 5, 29} {
				slicings = append(slicings, slicing{"rows=" + strconv.Itoa(rows), func(j *encodeJob) (bool, error) { return j.runRows(ctx, rows) }})
			}
			for _, tokens := range []int{1, 3, 40} {
				slicings = append(slicings, slicing{"tokens=" + strconv.Itoa(tokens), func(j *encodeJob) (bool, error) { return j.Run(ctx, tokens) }})
			}
			for si, sl := range slicings {
				got := encodeInSlices(t, m, prompts, sl.run)
				what := fmt.Sprintf("%s capacity %d %s", name, capacity, sl.name)
				for i := range prompts {
					if si < 2 { // whole layers
						if !slices.Equal(got.hidden[i], whole.hidden[i]) || !slices.Equal(got.cross[i], whole.cross[i]) {
							t.Errorf("%s: prompt %d: encoder output differs from the whole pass's", what, i)
						}
					} else {
						assertClose(t, what+": encoder output", got.hidden[i], whole.hidden[i], 1e-5, 1e-5)
						assertClose(t, what+": cross-attention keys and values", got.cross[i], whole.cross[i], 1e-5, 1e-5)
					}
					if !slices.Equal(got.tokens[i], whole.tokens[i]) {
						t.Errorf("%s capacity %d %s: prompt %d: tokens %v, the whole pass's %v", name, capacity, sl.name, i, got.tokens[i], whole.tokens[i])
					}
				}
			}
		}
	}
}

// TestEncoderSlicesSeam checks the Experts seam of a pre-gated encoder pass run in slices of 3
// rows: each slice routes its own rows, so every expert a pre-gated block acquires was hinted by
// the pre-gate of a slice of the previous MoE block (the same rows), and every acquire is released.
func TestEncoderSlicesSeam(t *testing.T) {
	m, rec := recordingSwitch(t)
	prompts := [][]int{{335, 150, 293, 221, 17, 9, 402}, {88, 91, 5, 6, 7, 8, 9, 10, 11}}
	j, err := m.beginEncode(prompts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	runs := 0
	for done := false; !done; runs++ {
		if done, err = j.runRows(context.Background(), 3); err != nil {
			t.Fatal(err)
		}
	}
	if want := ((2*len(m.enc.blocks)+1)*16 + 2) / 3; runs != want {
		t.Fatalf("%d Runs of 3 rows, want %d", runs, want)
	}
	hinted := map[int][]int{}
	acquires := map[int]int{}
	for i, e := range rec.events {
		switch {
		case e.hint:
			hinted[e.block] = append(hinted[e.block], e.experts...)
		default:
			acquires[e.block]++
			if !slices.Contains(hinted[e.block], e.experts[0]) {
				t.Fatalf("event %d: block %d acquires expert %d, hinted %v", i, e.block, e.experts[0], hinted[e.block])
			}
		}
	}
	if acquires[0] < 2 || acquires[1] < 2 {
		t.Fatalf("acquires per encoder MoE block: %v, want several slices' each", acquires)
	}
	for k, n := range rec.held {
		if n != 0 {
			t.Fatalf("expert %v acquired %d more times than released", k, n)
		}
	}
}
