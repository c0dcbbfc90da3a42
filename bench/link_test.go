package bench

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pregate/pregate/routing"
)

// memFetcher serves n-byte blobs of a constant byte from memory, at once.
type memFetcher struct{ n int64 }

var errNoExpert = errors.New("no such expert")

func (f memFetcher) Size(routing.ExpertKey) int64 { return f.n }

func (f memFetcher) Fetch(_ context.Context, k routing.ExpertKey, dst []byte) error {
	if k.Block < 0 {
		return errNoExpert
	}
	for i := range dst {
		dst[i] = 7
	}
	return nil
}

// TestShapeLinkIsOneFIFOLink: concurrent fetches share the link, so the last of three 10 ms
// transfers ends no sooner than 30 ms after they started, and the bytes arrive intact.
func TestShapeLinkIsOneFIFOLink(t *testing.T) {
	const size, bps = 10_000, 1e6 // 10 ms per fetch
	f := shapeLink(memFetcher{n: size}, bps)
	if f.Size(routing.ExpertKey{}) != size {
		t.Fatalf("Size %d, want the wrapped fetcher's %d", f.Size(routing.ExpertKey{}), size)
	}
	start := time.Now()
	var wg sync.WaitGroup
	took := make([]time.Duration, 3)
	errs := make([]error, 3)
	for i := range took {
		wg.Go(func() {
			dst := make([]byte, size)
			errs[i] = f.Fetch(context.Background(), routing.ExpertKey{Expert: i}, dst)
			took[i] = time.Since(start)
			if dst[0] != 7 || dst[size-1] != 7 {
				errs[i] = errors.New("bytes not fetched")
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	first, last := min(took[0], took[1], took[2]), max(took[0], took[1], took[2])
	if first < 10*time.Millisecond || last < 30*time.Millisecond {
		t.Errorf("fetches ended after %v: want the first ≥ 10ms, the last ≥ 30ms", took)
	}
}

func TestShapeLinkErrors(t *testing.T) {
	f := shapeLink(memFetcher{n: 1 << 20}, 1e6) // a second per fetch
	if err := f.Fetch(context.Background(), routing.ExpertKey{Block: -1}, make([]byte, 1<<20)); !errors.Is(err, errNoExpert) {
		t.Errorf("the wrapped fetcher's error: got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := f.Fetch(ctx, routing.ExpertKey{}, make([]byte, 1<<20))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a fetch whose context ended: %v", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a cancelled fetch waited %v for the link", took)
	}
}
