package compute

import (
	"math"
	"unsafe"
)

// BF16ToFloat32 converts raw bfloat16 bits to a float32 (exact).
func BF16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// Float32ToBF16 rounds f to the nearest bfloat16 (ties to even), like
// torch's .to(torch.bfloat16). NaNs stay NaN (quiet).
func Float32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// ConvertBF16 writes float32(src[i]) to dst[i] for i < len(src).
// len(dst) must be >= len(src).
func ConvertBF16(dst []float32, src []uint16) {
	n := len(src)
	dst = dst[:n]
	i := 0
	if n >= 4 {
		// Four bf16 at a time with one 64-bit load and two 64-bit stores:
		// bf16 lanes 0..3 (16 bits each) become the high halves of four
		// float32 lanes. x86 tolerates the possibly unaligned accesses.
		q := n / 4
		in := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(src))), q)
		out := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(dst))), 2*q)
		for j, v := range in {
			o := out[2*j : 2*j+2 : 2*j+2]
			o[0] = (v&0xffff)<<16 | (v&0xffff0000)<<32
			o[1] = (v>>16)&0xffff0000 | v&0xffff000000000000
		}
		i = 4 * q
	}
	for ; i < n; i++ {
		dst[i] = math.Float32frombits(uint32(src[i]) << 16)
	}
}

// bf16BlockRows is how many weight rows MatMulTBF16 converts into the
// per-thread float32 scratch block before calling the f32 kernel on them.
// The block stays in L2 (1 MiB per core on the benchmark machine): 256 KiB
// for GEMV-like shapes (m <= 4, one short sgemv call per row of a per block;
// smaller blocks lose to OpenBLAS's ~1µs per-call overhead), 1 MiB when m is
// big enough that the f32 GEMM's packing of a must be amortised over many
// weight rows. Tuned on 768×3072 (ExpBF16Block, since removed): m=1 2
// threads 481→432µs, m=4 766→555µs against 32 KiB blocks; m=64 1 thread
// 3.65→3.18ms against 256 KiB.
const (
	bf16SmallBlock = 64 << 10  // floats
	bf16BigBlock   = 256 << 10 // floats
)

func bf16BlockRows(m, k int) int {
	floats := bf16SmallBlock
	if m > gemvMaxM {
		floats = bf16BigBlock
	}
	rows := max(1, floats/k)
	if m > gemvMaxM {
		rows = max(rows, 32)
	}
	return rows
}

// MatMulTBF16 is MatMulT with bfloat16 weights (raw bits, w[n×k] row-major),
// float32 activations and float32 accumulation. Each thread converts a block
// of its weight rows to float32 in a per-thread scratch buffer (exact), then
// runs the f32 kernel on it, so results match MatMulT on the widened weights
// up to summation order.
func (c *CPU) MatMulTBF16(dst, a []float32, m, k int, w []uint16, n int, accumulate bool) {
	checkMatMul(dst, a, m, k, len(w), n)
	beta, done := prologue(dst, m, k, n, accumulate)
	if done {
		return
	}
	p := c.p
	parts, splitN := p.plan(m, k, n)
	p.acquire()
	defer p.release(c)
	if parts == 1 {
		splitN = true
		p.bounds[0], p.bounds[1] = 0, n
	} else if splitN {
		align := 1
		if n >= 64*parts {
			align = 16
		}
		p.split(n, parts, align)
	} else {
		p.split(m, parts, 1)
	}
	p.mm = mmArgs{dst: dst, a: a, wb: w, m: m, k: k, n: n, splitN: splitN, beta: beta}
	p.run(parts, p.bf16Task)
	p.mm = mmArgs{}
}

func (p *pool) runMatMulTBF16(t, lo, hi int) {
	mm := &p.mm
	if hi <= lo {
		return
	}
	// Rows of a (and dst) and rows of w this chunk covers.
	m, a, dst := mm.m, mm.a, mm.dst
	j0, j1 := 0, mm.n
	if mm.splitN {
		j0, j1 = lo, hi
	} else {
		m, a, dst = hi-lo, a[lo*mm.k:], dst[lo*mm.n:]
	}
	k := mm.k
	rows := min(bf16BlockRows(m, k), j1-j0)
	if cap(p.scratch[t]) < rows*k {
		p.scratch[t] = make([]float32, rows*k)
	}
	buf := p.scratch[t][:rows*k]
	for j := j0; j < j1; j += rows {
		r := min(rows, j1-j)
		if bf16RowsNT(dst[j:], a, m, k, mm.wb[j*k:(j+r)*k], r, mm.n, mm.beta) {
			continue
		}
		ConvertBF16(buf[:r*k], mm.wb[j*k:(j+r)*k])
		gemmNT(dst[j:], a, m, k, buf, r, mm.n, mm.beta)
	}
}
