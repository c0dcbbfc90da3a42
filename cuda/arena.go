//go:build cuda

package cuda

import (
	"fmt"
	"sort"
	"sync"
)

// arenaAlign is the alignment of every range the arena hands out: cuMemAlloc's own, so a blob's
// 64-byte-aligned tensors stay aligned for the kernels' 128-bit loads.
const arenaAlign = 256

// span is a range [off, off+n) of the arena.
type span struct{ off, n int64 }

// arena sub-allocates one device allocation: the expert cache's memory, allocated once when the
// worker starts, so that taking a buffer for an expert (under the cache's lock) is a few
// comparisons, never a driver call. Free ranges are kept sorted by offset and coalesced with their
// neighbours on release; alloc takes the smallest free range that fits (best fit), which with the
// few sizes of a model's experts reuses an evicted expert's range exactly.
type arena struct {
	base devptr
	size int64

	mu   sync.Mutex
	free []span // sorted by off, no two adjacent
	used int64
}

func newArena(base devptr, size int64) *arena {
	a := &arena{base: base, size: size}
	if size > 0 {
		a.free = []span{{0, size}}
	}
	return a
}

func alignUp(n int64) int64 { return (n + arenaAlign - 1) &^ (arenaAlign - 1) }

// alloc returns the offset of n free bytes (n > 0, rounded up to arenaAlign).
func (a *arena) alloc(n int64) (int64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("cuda: arena alloc of %d bytes", n)
	}
	n = alignUp(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	best := -1
	for i, s := range a.free {
		if s.n >= n && (best < 0 || s.n < a.free[best].n) {
			best = i
		}
	}
	if best < 0 {
		largest := int64(0)
		for _, s := range a.free {
			largest = max(largest, s.n)
		}
		return 0, fmt.Errorf("%w: the expert arena has no free range of %d bytes (%d of %d used, the largest free range is %d)",
			ErrOutOfMemory, n, a.used, a.size, largest)
	}
	s := a.free[best]
	if s.n == n {
		a.free = append(a.free[:best], a.free[best+1:]...)
	} else {
		a.free[best] = span{s.off + n, s.n - n}
	}
	a.used += n
	return s.off, nil
}

// release returns the range [off, off+n) that alloc gave for n bytes.
func (a *arena) release(off, n int64) {
	n = alignUp(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].off > off })
	// Merge with the previous range, the next one, both, or neither.
	prev := i > 0 && a.free[i-1].off+a.free[i-1].n == off
	next := i < len(a.free) && off+n == a.free[i].off
	switch {
	case prev && next:
		a.free[i-1].n += n + a.free[i].n
		a.free = append(a.free[:i], a.free[i+1:]...)
	case prev:
		a.free[i-1].n += n
	case next:
		a.free[i] = span{off, n + a.free[i].n}
	default:
		a.free = append(a.free, span{})
		copy(a.free[i+1:], a.free[i:])
		a.free[i] = span{off, n}
	}
	a.used -= n
}

// inUse is the number of bytes handed out.
func (a *arena) inUse() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used
}
