package worker

import (
	"strings"
	"testing"

	"github.com/pregate/pregate/compute"
)

// TestCPUBufferTensor: a CPU device buffer's tensors are views of its bytes (a write through the
// buffer shows in the engine's weights), and ranges it cannot view are refused with an error.
func TestCPUBufferTensor(t *testing.T) {
	dev := NewCPU()
	defer dev.Close()
	buf, err := dev.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	cpu := compute.NewCPU(1)
	defer cpu.Close()

	w, err := buf.Tensor(8, compute.F32, 4)
	if err != nil {
		t.Fatal(err)
	}
	copy(buf.HostView()[8:12], []byte{0, 0, 0x80, 0x3f}) // 1.0f, little-endian
	got := make([]float32, 4)
	if err := cpu.Download(got, w); err != nil {
		t.Fatal(err)
	}
	if got[0] != 1 || w.DType() != compute.F32 || w.Len() != 4 {
		t.Errorf("tensor at byte 8 reads %v (%s[%d]), want a view with 1 first", got, w.DType(), w.Len())
	}
	bf, err := buf.Tensor(2, compute.BF16, 31)
	if err != nil || bf.Len() != 31 || bf.DType() != compute.BF16 {
		t.Errorf("BF16 tensor at byte 2: %s[%d], %v", bf.DType(), bf.Len(), err)
	}

	for _, tt := range []struct {
		name string
		off  int64
		dt   compute.DType
		n    int
		want string
	}{
		{"past the end", 8, compute.F32, 15, "of a 64-byte buffer"},
		{"negative offset", -4, compute.F32, 1, "of a 64-byte buffer"},
		{"misaligned", 2, compute.F32, 2, "not aligned"},
		{"empty", 0, compute.F32, 0, "empty"},
		{"unknown dtype", 0, 0, 1, "of a 64-byte buffer"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := buf.Tensor(tt.off, tt.dt, tt.n); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Tensor(%d, %s, %d): %v, want an error with %q", tt.off, tt.dt, tt.n, err, tt.want)
			}
		})
	}
}
