package compute_test

import (
	"fmt"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/compute/backendtest"
)

// TestCPUBackend runs the backend conformance suite on the CPU device, single-threaded and with
// worker threads (the ops split their work differently).
func TestCPUBackend(t *testing.T) {
	for _, threads := range []int{1, 3} {
		t.Run(fmt.Sprintf("threads=%d", threads), func(t *testing.T) {
			cpu := compute.NewCPU(threads)
			t.Cleanup(cpu.Close)
			backendtest.Run(t, cpu)
		})
	}
}

// TestTensorViews: views are element ranges of the same memory, and ranges outside it panic (a
// shape bug in the caller) instead of reading past the memory.
func TestTensorViews(t *testing.T) {
	x := compute.HostTensor(make([]float32, 10))
	v := x.View(2, 6).Rows(1, 3, 2)
	if v.Offset() != 4 || v.Len() != 4 || v.ByteOffset() != 16 || v.Memory() != x.Memory() || v.DType() != compute.F32 {
		t.Errorf("rows 1..3 of width 2 of view [2, 8): offset %d len %d byte offset %d", v.Offset(), v.Len(), v.ByteOffset())
	}
	if y := compute.NewTensor(x.Memory(), compute.BF16, 3, 17); y.ByteOffset() != 6 || y.Bytes() != 34 {
		t.Errorf("BF16 tensor of 17 at element 3: byte offset %d, %d bytes", y.ByteOffset(), y.Bytes())
	}
	if !(compute.Tensor{}).IsZero() || x.IsZero() {
		t.Error("IsZero is wrong")
	}
	for _, tt := range []struct {
		name string
		fn   func()
	}{
		{"view past the end", func() { x.View(8, 3) }},
		{"negative view", func() { x.View(-1, 2) }},
		{"rows past the end", func() { x.Rows(4, 6, 2) }},
		{"tensor past its memory", func() { compute.NewTensor(x.Memory(), compute.F32, 5, 6) }},
		{"BF16 tensor past its memory", func() { compute.NewTensor(x.Memory(), compute.BF16, 0, 21) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			tt.fn()
		})
	}
}

// TestCPUFreeList: the CPU backend recycles whole tensors from Alloc (cleared), and never a view,
// a Const (a view of someone's memory, e.g. a mapped checkpoint) or a tensor freed twice.
func TestCPUFreeList(t *testing.T) {
	cpu := compute.NewCPU(1)
	defer cpu.Close()
	alloc := func(n int) compute.Tensor {
		t.Helper()
		x, err := cpu.Alloc(compute.F32, n)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	a := alloc(8)
	cpu.Upload(a, []float32{1, 2, 3, 4, 5, 6, 7, 8})
	cpu.Free(a)
	cpu.Free(a) // a second Free must not put it in the list twice
	b, c := alloc(8), alloc(8)
	if b.Memory() != a.Memory() || c.Memory() == a.Memory() {
		t.Errorf("Alloc after Free: reused %v, then %v; want the freed memory once", b.Memory() == a.Memory(), c.Memory() == a.Memory())
	}
	got := make([]float32, 8)
	if err := cpu.Download(got, b); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 0 {
			t.Fatalf("recycled tensor not cleared: element %d is %v", i, v)
		}
	}
	host := []float32{9, 9, 9, 9}
	k, err := cpu.Const(host)
	if err != nil {
		t.Fatal(err)
	}
	cpu.Free(k)
	cpu.Free(c.View(0, 4))
	if d := alloc(4); d.Memory() == k.Memory() || host[0] != 9 {
		t.Errorf("a freed Const was recycled (host %v)", host)
	}
	if d := alloc(8); d.Memory() == c.Memory() {
		t.Error("a freed view recycled its whole allocation")
	}
}
