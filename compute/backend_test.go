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
