//go:build cuda

package cuda

import (
	"encoding/binary"
	"math"
)

// params packs a kernel's arguments into one buffer, each at its natural alignment, and records
// where each starts: the launch hands the driver a pointer to every argument (cuLaunchKernel's
// kernelParams), and the driver reads each one's size from the kernel's image. The kernels take
// only device pointers (8 bytes), int and float (4 bytes). One params is reused for every launch of
// a backend (ops are issued by one goroutine at a time), so a launch allocates nothing.
type params struct {
	buf   []byte
	offs  []int32 // where each argument starts in buf
	kinds []byte  // each argument's kind, as signatures reads a kernel's: 'p', 'i' or 'f'
}

// maxParams bounds a kernel's argument count (the C side's array of argument pointers).
const maxParams = 32

func (p *params) reset() *params {
	p.buf, p.offs, p.kinds = p.buf[:0], p.offs[:0], p.kinds[:0]
	return p
}

// align starts the next argument, of kind k, at a multiple of n and records it.
func (p *params) align(n int, k byte) {
	for len(p.buf)%n != 0 {
		p.buf = append(p.buf, 0)
	}
	if len(p.offs) == maxParams {
		panic("cuda: a kernel launch with more than 32 parameters")
	}
	p.offs = append(p.offs, int32(len(p.buf)))
	p.kinds = append(p.kinds, k)
}

// ptr appends a device pointer.
func (p *params) ptr(v devptr) *params {
	p.align(8, 'p')
	p.buf = binary.LittleEndian.AppendUint64(p.buf, uint64(v))
	return p
}

// i32 appends an int. The caller has checked that v fits (sizes are checked against the tensors,
// which are at most 2³¹ elements).
func (p *params) i32(v int) *params {
	p.align(4, 'i')
	p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(int32(v)))
	return p
}

// f32 appends a float.
func (p *params) f32(v float32) *params {
	p.align(4, 'f')
	p.buf = binary.LittleEndian.AppendUint32(p.buf, math.Float32bits(v))
	return p
}
