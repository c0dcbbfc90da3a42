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
	allocs int
	bad    []string
}

func newCountingBackend(t *testing.T) *countingBackend {
	return &countingBackend{CPU: newCPU(t, 2), live: map[compute.Memory]int{}}
}

func (b *countingBackend) Alloc(dt compute.DType, n int) (compute.Tensor, error) {
	x, err := b.CPU.Alloc(dt, n)
	if err == nil {
		b.mu.Lock()
		b.live[x.Memory()] = n
		b.allocs++
		b.mu.Unlock()
	}
	return x, err
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
		b.bad = append(b.bad, fmt.Sprintf("Free of %s[%d] that is not a live allocation (a Const, or freed twice)", x.DType(), x.Len()))
	case x.Offset() != 0 || x.Len() != n:
		b.bad = append(b.bad, fmt.Sprintf("Free of a view [%d, +%d) of an allocation of %d", x.Offset(), x.Len(), n))
	default:
		delete(b.live, x.Memory())
	}
}

// TestEngineFreesWhatItAllocates: after Generate (whose sequences are closed) and after Encode,
// every tensor the engine allocated on its backend has been freed, once, whole.
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
			if be.allocs == 0 {
				t.Fatal("the engine allocated nothing on its backend")
			}
			for _, b := range be.bad {
				t.Error(b)
			}
			if len(be.live) != 0 {
				t.Errorf("%d of %d allocations still live", len(be.live), be.allocs)
			}
		})
	}
}
