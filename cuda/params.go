//go:build cuda

package cuda

import (
	"encoding/binary"
	"math"
)

// params packs a kernel's arguments as the kernel's parameter list lays them out: each at its
// natural alignment, in order (cuLaunchKernel's CU_LAUNCH_PARAM_BUFFER_POINTER). The kernels take
// only device pointers (8 bytes), int and float (4 bytes). One params is reused for every launch of
// a backend (ops are issued by one goroutine at a time), so a launch allocates nothing.
type params struct {
	buf []byte
}

func (p *params) reset() *params {
	p.buf = p.buf[:0]
	return p
}

func (p *params) align(n int) {
	for len(p.buf)%n != 0 {
		p.buf = append(p.buf, 0)
	}
}

// ptr appends a device pointer.
func (p *params) ptr(v devptr) *params {
	p.align(8)
	p.buf = binary.LittleEndian.AppendUint64(p.buf, uint64(v))
	return p
}

// i32 appends an int. The caller has checked that v fits (sizes are checked against the tensors,
// which are at most 2³¹ elements).
func (p *params) i32(v int) *params {
	p.align(4)
	p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(int32(v)))
	return p
}

// f32 appends a float.
func (p *params) f32(v float32) *params {
	p.align(4)
	p.buf = binary.LittleEndian.AppendUint32(p.buf, math.Float32bits(v))
	return p
}
