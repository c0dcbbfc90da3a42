package compute

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Benchmarks cycle through several distinct copies of the weight matrix,
// together well over the 32 MiB L3 of the benchmark machines, so that every
// op has to stream its weights from DRAM as in real decoding (each layer's
// weights are touched once per token). With a single matrix, a 9 MiB
// 768×3072 weight would sit in L3 and an m=1 GEMV would report
// cache bandwidth rather than memory bandwidth.
const benchWorkingSet = 128 << 20

func copiesFor(bytes int) int {
	return max(2, (benchWorkingSet+bytes-1)/bytes)
}

var benchWeightCache = map[string]any{}

func benchF32Weights(n, k int) [][]float32 {
	key := fmt.Sprintf("f32 %dx%d", n, k)
	if w, ok := benchWeightCache[key]; ok {
		return w.([][]float32)
	}
	r := rand.New(rand.NewPCG(uint64(n), uint64(k)))
	base := randSlice(r, n*k)
	ws := make([][]float32, copiesFor(4*n*k))
	for i := range ws {
		ws[i] = append([]float32(nil), base...)
		ws[i][i%len(base)] += 1 // distinct copies
	}
	benchWeightCache[key] = ws
	return ws
}

func benchBF16Weights(n, k int) [][]uint16 {
	key := fmt.Sprintf("bf16 %dx%d", n, k)
	if w, ok := benchWeightCache[key]; ok {
		return w.([][]uint16)
	}
	r := rand.New(rand.NewPCG(uint64(n), uint64(k)))
	base, _ := bf16Weights(r, n*k)
	ws := make([][]uint16, copiesFor(2*n*k))
	for i := range ws {
		ws[i] = append([]uint16(nil), base...)
		ws[i][i%len(base)] ^= 1
	}
	benchWeightCache[key] = ws
	return ws
}

func report(b *testing.B, m, k, n, wbytes int) {
	sec := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(2*float64(m)*float64(k)*float64(n)/sec/1e9, "GFLOP/s")
	b.ReportMetric(float64(wbytes)/sec/1e9, "GB/s")
}

var benchShapes = []shape{
	{1, 768, 3072}, {4, 768, 3072}, {32, 768, 3072}, {64, 768, 3072}, {256, 1024, 3584},
}

func BenchmarkMatMulT(b *testing.B) {
	for _, s := range benchShapes {
		r := rand.New(rand.NewPCG(1, 1))
		a := randSlice(r, s.m*s.k)
		dst := make([]float32, s.m*s.n)
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%dx%dx%d/threads=%d", s.m, s.k, s.n, th), func(b *testing.B) {
				benchMatMulT(b, s, th, a, dst)
			})
		}
	}
}

func BenchmarkMatMulTBF16(b *testing.B) {
	for _, s := range []shape{{1, 768, 3072}, {4, 768, 3072}, {64, 768, 3072}} {
		r := rand.New(rand.NewPCG(1, 1))
		a := randSlice(r, s.m*s.k)
		dst := make([]float32, s.m*s.n)
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%dx%dx%d/threads=%d", s.m, s.k, s.n, th), func(b *testing.B) {
				benchMatMulTBF16(b, s, th, a, dst)
			})
		}
	}
}

// benchMatMul times mul, one product with weights w, on a CPU with th threads, cycling w through
// the copies ws, and reports GFLOP/s and GB/s of weights.
func benchMatMul[W float32 | uint16](b *testing.B, s shape, th int, ws [][]W, mul func(c *CPU, w []W)) {
	c := NewCPU(th)
	defer c.Close()
	i := 0
	for b.Loop() {
		mul(c, ws[i%len(ws)])
		i++
	}
	report(b, s.m, s.k, s.n, int(unsafe.Sizeof(ws[0][0]))*s.n*s.k)
}

func benchMatMulT(b *testing.B, s shape, th int, a, dst []float32) {
	benchMatMul(b, s, th, benchF32Weights(s.n, s.k), func(c *CPU, w []float32) {
		c.MatMulT(dst, a, s.m, s.k, w, s.n, false)
	})
}

// benchMatMulTBF16 is benchMatMulT for MatMulTBF16, with the bf16 kernel in use.
func benchMatMulTBF16(b *testing.B, s shape, th int, a, dst []float32) {
	benchMatMul(b, s, th, benchBF16Weights(s.n, s.k), func(c *CPU, w []uint16) {
		c.MatMulTBF16(dst, a, s.m, s.k, w, s.n, false)
	})
}

// gemvDotGo is the plain-Go (no SIMD) GEMV: one Dot per weight row.
func gemvDotGo(dst, x []float32, k int, w []float32, n int) {
	for j := range dst[:n] {
		dst[j] = Dot(x, w[j*k:(j+1)*k])
	}
}

type gemvVariant struct {
	name string
	f    func(dst, x []float32, k int, w []float32, n int)
}

// blasGEMV1 holds the OpenBLAS variants (bench_openblas_test.go) in the cgo
// build.
var blasGEMV1 []gemvVariant

// BenchmarkGEMV1 compares single-threaded m=1 kernels on 768×3072
// (weights streamed from DRAM): plain Go (no SIMD), gonum's SSE Sgemv, and
// in the cgo build OpenBLAS sgemv vs sgemm with m=1.
func BenchmarkGEMV1(b *testing.B) {
	const k, n = 768, 3072
	ws := benchF32Weights(n, k)
	x := randSlice(rand.New(rand.NewPCG(1, 1)), k)
	dst := make([]float32, n)
	variants := append([]gemvVariant{
		{"go-dot", gemvDotGo},
		{"gonum-sgemv", func(dst, x []float32, k int, w []float32, n int) {
			gonum.Implementation{}.Sgemv(blas.NoTrans, n, k, 1, w, k, x, 1, 0, dst, 1)
		}},
	}, blasGEMV1...)
	backendInit()
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				v.f(dst, x, k, ws[i%len(ws)], n)
				i++
			}
			report(b, 1, k, n, 4*n*k)
		})
	}
}

// BenchmarkParallelFor measures the fork/join cost of an empty op.
func BenchmarkParallelFor(b *testing.B) {
	for _, th := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", th), func(b *testing.B) {
			c := NewCPU(th)
			defer c.Close()
			fn := func(lo, hi int) {}
			for b.Loop() {
				c.ParallelFor(th, fn)
			}
		})
	}
}

// BenchmarkConvertBF16 widens one of MatMulTBF16's large-m scratch blocks (bf16BigBlock, 1 MiB of
// float32 that stays in L2) with each kernel's loop, and with a one-at-a-time Go loop.
func BenchmarkConvertBF16(b *testing.B) {
	src, _ := bf16Weights(rand.New(rand.NewPCG(1, 1)), bf16BigBlock)
	dst := make([]float32, len(src))
	for _, kind := range []bf16Kernel{bf16Go, bf16AVX2} {
		if !bf16Supported(kind) {
			continue
		}
		b.Run(kind.String(), func(b *testing.B) {
			b.SetBytes(int64(len(src) * 2))
			for b.Loop() {
				convertBF16(kind, dst, src)
			}
		})
	}
	b.Run("scalar", func(b *testing.B) {
		b.SetBytes(int64(len(src) * 2))
		for b.Loop() {
			for i, v := range src {
				dst[i] = math.Float32frombits(uint32(v) << 16)
			}
		}
	})
}

// BenchmarkDecodeGEMV compares, on the decode shapes (m = 1 and 4 rows of activations, weights
// streamed from DRAM), f32 weights (MatMulT) with bf16 weights (MatMulTBF16) under each bf16
// kernel this CPU runs: "go" (widen blocks into float32, then the f32 GEMV), "avx2" and "avx512"
// (fused). Shapes [k → n]: Mixtral-8x7B's expert up/gate (4096 → 14336) and down (14336 → 4096),
// switch-base's expert (768 → 3072, 3072 → 768). Compare kernels with
// `benchstat -col /kernel` (docs/BENCHMARKS.md, issue 16 part 4).
func BenchmarkDecodeGEMV(b *testing.B) {
	for _, s := range []shape{
		{1, 4096, 14336}, {1, 14336, 4096}, {1, 768, 3072}, {1, 3072, 768}, {4, 4096, 14336}, {4, 768, 3072},
	} {
		r := rand.New(rand.NewPCG(1, 1))
		a := randSlice(r, s.m*s.k)
		dst := make([]float32, s.m*s.n)
		for _, th := range []int{1, 2} {
			prefix := fmt.Sprintf("shape=%dx%dx%d/threads=%d", s.m, s.k, s.n, th)
			b.Run(prefix+"/kernel=f32", func(b *testing.B) { benchMatMulT(b, s, th, a, dst) })
			for _, kind := range allBF16Kernels {
				if !bf16Supported(kind) {
					continue
				}
				b.Run(prefix+"/kernel=bf16-"+kind.String(), func(b *testing.B) {
					old := bf16Active
					bf16Active = func() bf16Kernel { return kind }
					defer func() { bf16Active = old }()
					benchMatMulTBF16(b, s, th, a, dst)
				})
			}
		}
		benchWeightCache = map[string]any{} // the Mixtral shapes hold ~0.7 GB each
	}
}
