package compute

import (
	"math"
	"os"
	"sync"
	"unsafe"
)

// bf16Kernel is how MatMulTBF16 multiplies by bf16 weights (and ConvertBF16 widens them).
//
// For the decode shapes (m <= gemvMaxM rows of activations) the SIMD kernels widen the weights in
// registers while they stream them once from memory, 2 bytes per weight; bf16Go widens each block
// of weight rows into a float32 scratch buffer first and runs the f32 GEMV on it, which moves 5x
// the bytes through the caches and on AVX2-only CPUs made bf16 decode slower than f32. For larger
// m every kernel widens blocks into the scratch buffer (the f32 GEMM's packing and compute
// dominate there); the SIMD kernels only widen with AVX2 instead of 64-bit Go.
type bf16Kernel uint8

const (
	bf16Go     bf16Kernel = iota // pure Go widening + f32 GEMV: any CPU, the pure-Go build
	bf16AVX2                     // AVX2 + FMA (Haswell, Zen 1 and later), cgo build: bf16_kernels.c
	bf16AVX512                   // AVX-512F fused GEMV, AVX2 widening, cgo build: bf16_kernels.c
)

var bf16KernelNames = [...]string{bf16Go: "go", bf16AVX2: "avx2", bf16AVX512: "avx512"}

func (k bf16Kernel) String() string { return bf16KernelNames[k] }

// BF16KernelEnv is the environment variable that overrides the choice of bf16 kernel: "go",
// "avx2" or "avx512". A kernel the CPU cannot run, or any other value, is ignored. It exists to
// benchmark and test the AVX2 kernel on AVX-512 machines, and the widening path anywhere. The
// same choice picks the attention and SiLU vector kernels (vec_cgo.go) and, with "avx512", the
// f32 GEMV's tile kernel (gemmNT; otherwise OpenBLAS's sgemv).
const BF16KernelEnv = "PREGATE_BF16_KERNEL"

// chooseBF16Kernel returns the kernel named by env if this CPU and build can run it, and the
// fastest one they can run otherwise (AVX-512 over AVX2 over Go).
func chooseBF16Kernel(env string) bf16Kernel {
	for k, name := range bf16KernelNames {
		if name == env && bf16Supported(bf16Kernel(k)) {
			return bf16Kernel(k)
		}
	}
	for _, k := range []bf16Kernel{bf16AVX512, bf16AVX2} {
		if bf16Supported(k) {
			return k
		}
	}
	return bf16Go
}

// bf16Active returns the kernel in use, chosen once per process from the CPU's features and
// BF16KernelEnv. A variable so tests can force each kernel (forceBF16Kernel).
var bf16Active = sync.OnceValue(func() bf16Kernel { return chooseBF16Kernel(os.Getenv(BF16KernelEnv)) })

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
func ConvertBF16(dst []float32, src []uint16) { convertBF16(bf16Active(), dst, src) }

// convertSIMDMin is the length from which convertBF16 calls the C vector loop: below it the cgo
// call (~50ns) costs more than the 64-bit Go loop saves.
const convertSIMDMin = 256

func convertBF16(kind bf16Kernel, dst []float32, src []uint16) {
	n := len(src)
	dst = dst[:n]
	if n >= convertSIMDMin && convertBF16SIMD(kind, dst, src) {
		return
	}
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
// per-thread float32 scratch block before calling the f32 kernel on them
// (m > gemvMaxM, or any m with the bf16Go kernel).
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

// bf16FusedBlock is the number of weights one call of a fused kernel covers at m <= 2: 256 KiB
// of bf16, ~5-10µs of streaming (1×4096·4096×14336 takes 5.1 ms for 59 M weights on 1 thread), so
// that no cgo call runs past sysmon's 20µs tick (see gemvBlockFloats). At m = 3, 4 the AVX2 kernel
// is compute-bound (8.7 ms at m = 4), so a call covers half as many. Always at least 8 rows, the
// AVX2 kernel's tile at m = 1.
const bf16FusedBlock = 128 << 10

func bf16FusedRows(m, k int) int {
	weights := bf16FusedBlock / ((m + 1) / 2)
	return max(8, weights/k&^7)
}

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
// float32 activations and float32 accumulation. For m <= 4 on x86-64 with AVX2
// and FMA (or AVX-512F) each thread runs a fused kernel over its weight rows
// that widens them in registers; otherwise each thread converts a block of its
// weight rows to float32 in a per-thread scratch buffer (exact), then runs the
// f32 kernel on it. Either way results match MatMulT on the widened weights up
// to summation order. See bf16Kernel.
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
	p.mm = mmArgs{dst: dst, a: a, wb: w, m: m, k: k, n: n, splitN: splitN, beta: beta, kind: bf16Active()}
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
	if m <= gemvMaxM && mm.kind != bf16Go {
		// Fused: no scratch; blocks only keep each cgo call short.
		rows := bf16FusedRows(m, k)
		for j := j0; j < j1; j += rows {
			r := min(rows, j1-j)
			if !bf16RowsNT(mm.kind, dst[j:], a, m, k, mm.wb[j*k:(j+r)*k], r, mm.n, mm.beta) {
				panic("compute: bf16 kernel " + mm.kind.String() + " not built in")
			}
		}
		return
	}
	rows := min(bf16BlockRows(m, k), j1-j0)
	if cap(p.scratch[t]) < rows*k {
		p.scratch[t] = make([]float32, rows*k)
	}
	buf := p.scratch[t][:rows*k]
	for j := j0; j < j1; j += rows {
		r := min(rows, j1-j)
		convertBF16(mm.kind, buf[:r*k], mm.wb[j*k:(j+r)*k])
		gemmNT(dst[j:], a, m, k, buf, r, mm.n, mm.beta)
	}
}
