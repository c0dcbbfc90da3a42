//go:build cgo && !purego

// Fused bf16 kernels for MatMulTBF16 (see bf16.go for when each runs).
//
// Why hand-written SIMD: a bf16 weight is the high half of a float32, so widening is a zero-extend
// and a shift, and a GEMV over bf16 weights could stream 2 bytes per weight. But neither Go (no
// SIMD intrinsics; gonum has no bf16) nor OpenBLAS offers a GEMV that widens bf16 weights in
// registers: its sbgemm/sbgemv take bf16 activations too (rounding ours), and Debian's 0.3.21 is
// built without them (no sbgemm symbol in libopenblas.so.0). Without one,
// MatMulTBF16 widens each block of weights into a float32 buffer and runs the f32 GEMV on it: 2
// bytes read + 4 written + 4 read again per weight, which on an AVX2-only EPYC made bf16 decode
// slower than f32 (11.3 vs 16.5 tok/s, docs/BENCHMARKS.md, issue 16 part 4).
//
// The kernels are compiled for their instruction sets through target attributes, so the rest of the
// package keeps the default (SSE2) target, and are called only when golang.org/x/sys/cpu reports
// the instructions (bf16Supported in gemm_openblas.go). They are plain C with intrinsics rather than
// Go assembly because the package already links C for OpenBLAS; each call covers a block of weight
// rows (bf16FusedRows: 128-256 KiB, 5-10µs) and cgo's ~50ns per call is noise next to it.

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "bf16_kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>

static inline float bf16_scalar(uint16_t b) {
	uint32_t u = (uint32_t)b << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

// The kernel (bf16_tile.h, instantiated below for AVX2 and AVX-512) computes a tile of M activation
// rows × R weight rows at a time: each step widens LANES bf16 of each of the R weight rows (VPMOVZXWD
// from memory, VPSLLD by 16) and FMAs them against the same LANES floats of each of the M
// activation rows, so every widened weight vector serves M rows and every activation vector R rows.
// Several weight rows at once also give the FMAs independent dependency chains, and amortise each
// output's horizontal sum over k. The tiles keep M·R accumulators, M activations and a weight
// vector in registers (16 ymm for AVX2, 32 zmm for AVX-512; the disassembly shows no spills). The
// AVX-512 kernel used to do one weight row at a time, and lost to the AVX2 tile on most decode
// shapes (4×4096·4096×14336, 2 threads: 17.1 vs 7.1 ms).
//
// Each iteration reads one 64-byte cache line (32 bf16) of every row of the tile and prefetches
// the line BF16_PREFETCH bytes ahead in each: with 2-8 rows read side by side the hardware
// prefetcher alone kept them slower (AVX2, 1×4096·4096×14336, 1 thread, 3 interleaved runs each:
// 5.9-7.6 ms without, 5.3-6.2 with 512 B ahead, 4.8-5.6 with 1 KiB).
//
// A tile's R rows lie side by side in memory, so when rows are short the line 1 KiB along a row
// is mostly the start of the next row of the same tile, already being read: with k = 1024 (2 KiB
// rows, mixtral-bench's w1/w3, attention and LM head) only the last row's prefetch reached new
// memory. A tile of at most BF16_NEXT_TILE_MAX bytes therefore prefetches, for each row, the same
// line of the next tile (R rows further on), which keeps a whole tile of lines in flight ahead of
// the reads; longer tiles keep the 1 KiB-ahead prefetch (docs/BENCHMARKS.md, issue 16 part 5).
#define BF16_PREFETCH 1024
#define BF16_NEXT_TILE_MAX (32 << 10)

// How far ahead the m = 1 loop prefetches bf16 weights (bf16_seq1_ in bf16_tile.h): the next page.
#define BF16_SEQ_PREFETCH 4096

// gemv1_scratch returns this thread's 64-byte-aligned buffer of at least n floats, for the shifted
// copy of the activations in bf16_gemv1_, or NULL if it cannot be had (the caller then runs
// unpeeled). On the heap, not the stack: a C call from Go runs on the thread's system stack, which
// musl makes 128 KiB, less than Mixtral-8x7B's down projection needs (k = 14,336). One buffer per
// thread that has run a peeled GEMV, kept for the thread's life: Go's threads rarely end.
static __thread float *gemv1_buf;
static __thread size_t gemv1_cap;

static float *gemv1_scratch(size_t n) {
	if (n > gemv1_cap) {
		size_t c = (n + 1023) & ~(size_t)1023;
		float *b = aligned_alloc(64, c * sizeof(float));
		if (b == NULL) {
			return NULL;
		}
		free(gemv1_buf);
		gemv1_buf = b;
		gemv1_cap = c;
	}
	return gemv1_buf;
}

// ---- AVX2 + FMA: 8 floats per vector; m = 1 row by row, tiles 2×4, 3×2, 4×2 (M·R <= 8). ----

__attribute__((target("avx2"), always_inline))
static inline __m256 bf16x8_avx2(const uint16_t *p) {
	__m128i h = _mm_loadu_si128((const __m128i *)p);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2"), always_inline))
static inline float hsum_avx2(__m256 v) {
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

// The first c floats of p (1 <= c <= 8), the rest zero; no lane past c is read.
__attribute__((target("avx2"), always_inline))
static inline __m256 first_avx2(const float *p, int c) {
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(c), lane));
}

// The last c floats of the 8 from p (1 <= c < 8), the rest zero; no lane before 8 - c is read.
__attribute__((target("avx2"), always_inline))
static inline __m256 last_avx2(const float *p, int c) {
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(7 - c)));
}

// Each instruction set's parameters of bf16_tile.h, then one instance per weight type: bf16, and
// f32 for MatMulT's GEMV (gemmNT, m <= gemvMaxM) in place of OpenBLAS's sgemv (on 1×1024·1024×3584
// its Haswell kernel streamed 31.9 GB/s where the m = 1 loop streams 38.2; docs/BENCHMARKS.md,
// issue 16 part 5).
#define TARGET "avx2,fma"
#define VEC __m256
#define LANES 8
#define vzero() _mm256_setzero_ps()
#define vloadf(p) _mm256_loadu_ps(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vhsum(v) hsum_avx2(v)
#define vadd(a, b) _mm256_add_ps(a, b)
#define vloadf_first(p, c) first_avx2(p, c)
#define vloadf_last(p, c) last_avx2(p, c)
#define R2 4
#define R3 2
#define R4 2

#define ISA avx2
#define WT uint16_t
#define vwiden(p) bf16x8_avx2(p)
#define wscalar(x) bf16_scalar(x)
#define ROWS_NAME pregate_bf16_rows_avx2
#include "bf16_tile.h"

#define ISA f32_avx2
#define WT float
#define vwiden(p) _mm256_loadu_ps(p)
#define wscalar(x) (x)
#define ROWS_NAME pregate_f32_rows_avx2
#include "bf16_tile.h"

#include "bf16_tile_isa_end.h"

// ---- AVX-512F: 16 floats per vector; m = 1 row by row, tiles 2×8, 3×4, 4×4 (M·R <= 16). ----

__attribute__((target("avx512f"), always_inline))
static inline __m512 bf16x16_avx512(const uint16_t *p) {
	__m256i h = _mm256_loadu_si256((const __m256i *)p);
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#define TARGET "avx512f"
#define VEC __m512
#define LANES 16
#define vzero() _mm512_setzero_ps()
#define vloadf(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vhsum(v) _mm512_reduce_add_ps(v)
#define vadd(a, b) _mm512_add_ps(a, b)
#define vloadf_first(p, c) _mm512_maskz_loadu_ps((__mmask16)((1u << (c)) - 1), p)
#define vloadf_last(p, c) _mm512_maskz_loadu_ps((__mmask16)~((1u << (16 - (c))) - 1), p)
#define R2 8
#define R3 4
#define R4 4

#define ISA avx512
#define WT uint16_t
#define vwiden(p) bf16x16_avx512(p)
#define wscalar(x) bf16_scalar(x)
#define ROWS_NAME pregate_bf16_rows_avx512
#include "bf16_tile.h"

#define ISA f32_avx512
#define WT float
#define vwiden(p) _mm512_loadu_ps(p)
#define wscalar(x) (x)
#define ROWS_NAME pregate_f32_rows_avx512
#include "bf16_tile.h"

#include "bf16_tile_isa_end.h"

// pregate_convert_bf16_avx2 is ConvertBF16 for AVX2: 16 weights per step.
__attribute__((target("avx2")))
void pregate_convert_bf16_avx2(float *dst, const uint16_t *src, size_t n) {
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		_mm256_storeu_ps(dst + i, bf16x8_avx2(src + i));
		_mm256_storeu_ps(dst + i + 8, bf16x8_avx2(src + i + 8));
	}
	for (; i < n; i++) {
		dst[i] = bf16_scalar(src[i]);
	}
}

#else // not x86-64: never called (bf16Supported reports only bf16Go there)

#include <stdlib.h>

void pregate_bf16_rows_avx512(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	abort();
}

void pregate_bf16_rows_avx2(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	abort();
}

void pregate_convert_bf16_avx2(float *dst, const uint16_t *src, size_t n) {
	abort();
}

void pregate_f32_rows_avx512(int m, int k, const float *a, const float *w, int n,
		float *dst, int ldc, int accumulate) {
	abort();
}

void pregate_f32_rows_avx2(int m, int k, const float *a, const float *w, int n,
		float *dst, int ldc, int accumulate) {
	abort();
}

#endif
