//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/pregate/pregate/compute"
)

// traceLines returns the fake driver's trace (FAKECUDA_TRACE) from line from on.
func traceLines(t *testing.T, path string, from int) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[min(from, len(lines)):]
}

// TestCopyFencedBehindFreedReaders: an expert buffer freed while the compute stream may still be
// reading it (its ops are enqueued, not run) is not overwritten by the next copy before they have
// run: the copy stream waits for an event recorded on the compute stream after them. A copy with
// no free since the last fence does not wait. The order of issue is checked on the fake driver's
// trace (it runs everything at once; a GPU runs each stream in issue order and a wait holds its
// stream until the event's work is done).
func TestCopyFencedBehindFreedReaders(t *testing.T) {
	d := device(t)
	path := os.Getenv("FAKECUDA_TRACE")
	if path == "" {
		t.Skip("the order of issue is traced by the fake driver only (FAKECUDA_TRACE)")
	}
	b := d.backend
	const n = 1 << 16
	a, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitCopy(d.CopyToDevice(a, stage(t, d, n, 1), n)); err != nil {
		t.Fatal(err)
	}
	src, err := a.Tensor(0, compute.F32, n/4)
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Alloc(compute.F32, n/4)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(out)
	start := len(traceLines(t, path, 0))
	b.Copy(out, src) // reads a, on the compute stream
	a.Free()
	c, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	first := d.CopyToDevice(c, stage(t, d, n, 2), n)
	second := d.CopyToDevice(c, stage(t, d, n, 3), n)
	for _, ev := range []*Event{first, second} {
		if err := waitCopy(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	lines := traceLines(t, path, start)
	comp, copies := fmt.Sprintf("%p", unsafe.Pointer(d.compute.s)), fmt.Sprintf("%p", unsafe.Pointer(d.copies.s))
	fence := fmt.Sprintf("%p", unsafe.Pointer(d.fence.e))
	htod := fmt.Sprintf("htod %s %#x %d", copies, uint64(c.ptr), n)
	at := func(line string, after int) int {
		i := slices.Index(lines[after+1:], line)
		if i < 0 {
			t.Fatalf("no %q after line %d of the trace:\n%s", line, after, strings.Join(lines, "\n"))
		}
		return after + 1 + i
	}
	read := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "dtod "+comp+" ") })
	if read < 0 {
		t.Fatalf("the read of the freed buffer is not in the trace:\n%s", strings.Join(lines, "\n"))
	}
	rec := at("record "+comp+" "+fence, read)
	wait := at("wait "+copies+" "+fence, rec)
	c1 := at(htod, wait)
	c2 := at(htod, c1)
	for _, l := range lines[c1:c2] {
		if strings.HasPrefix(l, "wait "+copies+" ") {
			t.Errorf("the second copy, with no free since the first, waited again: %q", l)
		}
	}
}
