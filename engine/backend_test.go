package engine

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/pregate/pregate/compute"
)

// countingBackend is the CPU backend with a ledger of its allocations: a device backend's memory is
// not collected by Go's GC, so whatever the engine allocates it must free.
type countingBackend struct {
	*compute.CPU
	mu     sync.Mutex
	live   map[compute.Memory]int // allocation → its length
	consts map[compute.Memory]bool
	allocs int
	bad    []string
}

func newCountingBackend(t *testing.T) *countingBackend {
	return &countingBackend{CPU: newCPU(t, 2), live: map[compute.Memory]int{}, consts: map[compute.Memory]bool{}}
}

func (b *countingBackend) Alloc(dt compute.DType, n int) (compute.Tensor, error) {
	x, err := b.CPU.Alloc(dt, n)
	return b.add(x, err, false)
}

func (b *countingBackend) Const(host []float32) (compute.Tensor, error) {
	x, err := b.CPU.Const(host)
	return b.add(x, err, true)
}

func (b *countingBackend) ConstBF16(host []uint16) (compute.Tensor, error) {
	x, err := b.CPU.ConstBF16(host)
	return b.add(x, err, true)
}

func (b *countingBackend) add(x compute.Tensor, err error, isConst bool) (compute.Tensor, error) {
	if err == nil {
		b.mu.Lock()
		b.live[x.Memory()] = x.Len()
		b.consts[x.Memory()] = isConst
		b.allocs++
		b.mu.Unlock()
	}
	return x, err
}

// liveAllocs counts the live tensors from Alloc (not Const).
func (b *countingBackend) liveAllocs() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for m := range b.live {
		if !b.consts[m] {
			n++
		}
	}
	return n
}

func (b *countingBackend) Free(x compute.Tensor) {
	if x.IsZero() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ok := b.live[x.Memory()]
	switch {
	case !ok:
		b.bad = append(b.bad, fmt.Sprintf("Free of %s[%d] that is not a live allocation (freed twice?)", x.DType(), x.Len()))
	case x.Offset() != 0 || x.Len() != n:
		b.bad = append(b.bad, fmt.Sprintf("Free of a view [%d, +%d) of an allocation of %d", x.Offset(), x.Len(), n))
	default:
		delete(b.live, x.Memory())
	}
}

// TestEngineFreesWhatItAllocates: after Generate (whose sequences are closed) and after Encode,
// every tensor the engine allocated on its backend has been freed, once, whole; after the model's
// Close, its weights (and the experts it loaded) too.
func TestEngineFreesWhatItAllocates(t *testing.T) {
	for _, name := range []string{"switch-tiny", "mixtral-tiny"} {
		t.Run(name, func(t *testing.T) {
			f := openFixture(t, name)
			be := newCountingBackend(t)
			m, err := Load(f.ckpt, be, Options{})
			if err != nil {
				t.Fatal(err)
			}
			prompts := [][]int{{3, 4, 5, 6, 7}, {8, 9}}
			res, _, err := Generate(context.Background(), m, prompts, GenerateOptions{MaxNewTokens: 6, IgnoreEOS: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res[0].GeneratedIDs) != 6 {
				t.Fatalf("generated %v", res[0].GeneratedIDs)
			}
			if sw, ok := m.(*Switch); ok {
				if _, err := sw.Encode(context.Background(), prompts, nil); err != nil {
					t.Fatal(err)
				}
			}
			if n := be.liveAllocs(); n != 0 || be.allocs == 0 {
				t.Errorf("after the steps, %d of %d allocations still live", n, be.allocs)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(); err != nil { // idempotent
				t.Fatal(err)
			}
			for _, b := range be.bad {
				t.Error(b)
			}
			if len(be.live) != 0 {
				t.Errorf("after Close, %d of %d allocations and weights still live", len(be.live), be.allocs)
			}
		})
	}
}
