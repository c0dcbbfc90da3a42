//go:build cgo && !purego

// Fused bf16 kernels for MatMulTBF16 (see bf16.go for when each runs).
//
// Why hand-written SIMD: a bf16 weight is the high half of a float32, so widening is a zero-extend
// and a shift, and a GEMV over bf16 weights could stream 2 bytes per weight. But neither Go (no
// SIMD intrinsics; gonum has no bf16) nor OpenBLAS 0.3.21 (sbgemm wants bf16 activations too, and
// has no bf16 GEMV kernel on AVX2) offers a GEMV that widens bf16 weights in registers. Without one,
// MatMulTBF16 widens each block of weights into a float32 buffer and runs the f32 GEMV on it: 2
// bytes read + 4 written + 4 read again per weight, which on an AVX2-only EPYC made bf16 decode
// slower than f32 (11.3 vs 16.5 tok/s, docs/BENCHMARKS.md, issue 16 part 4).
//
// The kernels are compiled for their instruction sets through target attributes, so the rest of the
// package keeps the default (SSE2) target, and are called only when golang.org/x/sys/cpu reports
// the instructions (bf16Supported in gemm_openblas.go). They are plain C with intrinsics rather than
// Go assembly because the package already links C for OpenBLAS; each call covers a block of weight
// rows (bf16BlockRows) that takes microseconds, so cgo's ~50ns per call is noise.

#include <stddef.h>
#include <stdint.h>
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

// Both kernels walk each weight row one 64-byte cache line (32 bf16) per iteration and prefetch the
// line BF16_PREFETCH bytes ahead in every row of the tile: with 2-8 rows read side by side the
// hardware prefetcher alone kept them slower (AVX2, 1×4096·4096×14336, 1 thread, 3 interleaved runs each: 5.9-7.6 ms without, 5.3-6.2 with
// 512 B ahead, 4.8-5.6 with 1 KiB).
#define BF16_PREFETCH 1024

// ---- AVX-512F: a tile of M activation rows × R weight rows, 16 weights per step. ----
//
// The AVX2 kernel below with 512-bit vectors: VPMOVZXWD from 256 bits, VPSLLD, FMA. M·R <= 16
// accumulators of the 32 zmm registers. (It replaced a kernel that did one weight row at a time:
// that one lost to the AVX2 tile on most decode shapes, e.g. 4×4096·4096×14336 at 2 threads
// 17.1 vs 7.1 ms.)

__attribute__((target("avx512f"), always_inline))
static inline __m512 bf16x16_avx512(const uint16_t *p) {
	__m256i h = _mm256_loadu_si256((const __m256i *)p);
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f"), always_inline))
static inline void bf16_tile_avx512(const int M, const int R, int k, const float *a,
		const uint16_t *w, float *dst, int ldc, int accumulate) {
	__m512 acc[4][8];
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			acc[i][r] = _mm512_setzero_ps();
		}
	}
	int p = 0;
	for (; p + 32 <= k; p += 32) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			_mm_prefetch((const char *)(w + (size_t)r * k + p) + BF16_PREFETCH, _MM_HINT_T0);
		}
#pragma GCC unroll 2
		for (int u = 0; u < 32; u += 16) {
			__m512 x[4];
#pragma GCC unroll 4
			for (int i = 0; i < M; i++) {
				x[i] = _mm512_loadu_ps(a + (size_t)i * k + p + u);
			}
#pragma GCC unroll 8
			for (int r = 0; r < R; r++) {
				__m512 wv = bf16x16_avx512(w + (size_t)r * k + p + u);
#pragma GCC unroll 4
				for (int i = 0; i < M; i++) {
					acc[i][r] = _mm512_fmadd_ps(wv, x[i], acc[i][r]);
				}
			}
		}
	}
	for (; p + 16 <= k; p += 16) {
		__m512 x[4];
#pragma GCC unroll 4
		for (int i = 0; i < M; i++) {
			x[i] = _mm512_loadu_ps(a + (size_t)i * k + p);
		}
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			__m512 wv = bf16x16_avx512(w + (size_t)r * k + p);
#pragma GCC unroll 4
			for (int i = 0; i < M; i++) {
				acc[i][r] = _mm512_fmadd_ps(wv, x[i], acc[i][r]);
			}
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			float s = _mm512_reduce_add_ps(acc[i][r]);
			for (int q = p; q < k; q++) {
				s += bf16_scalar(w[(size_t)r * k + q]) * a[(size_t)i * k + q];
			}
			float *d = dst + (size_t)i * ldc + r;
			*d = accumulate ? *d + s : s;
		}
	}
}

#define BF16_ROWS_AVX512(M, R)                                                                    \
	__attribute__((target("avx512f"))) static void bf16_rows_avx512_##M(int k, const float *a, \
			const uint16_t *w, int n, float *dst, int ldc, int accumulate) {                  \
		int j = 0;                                                                            \
		for (; j + R <= n; j += R) {                                                          \
			bf16_tile_avx512(M, R, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);    \
		}                                                                                     \
		for (; j < n; j++) {                                                                  \
			bf16_tile_avx512(M, 1, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);    \
		}                                                                                     \
	}

BF16_ROWS_AVX512(1, 8)
BF16_ROWS_AVX512(2, 8)
BF16_ROWS_AVX512(3, 4)
BF16_ROWS_AVX512(4, 4)

void pregate_bf16_rows_avx512(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	switch (m) {
	case 1:
		bf16_rows_avx512_1(k, a, w, n, dst, ldc, accumulate);
		break;
	case 2:
		bf16_rows_avx512_2(k, a, w, n, dst, ldc, accumulate);
		break;
	case 3:
		bf16_rows_avx512_3(k, a, w, n, dst, ldc, accumulate);
		break;
	default:
		bf16_rows_avx512_4(k, a, w, n, dst, ldc, accumulate);
		break;
	}
}

// ---- AVX2 + FMA: a tile of M activation rows × R weight rows, 8 weights per step. ----
//
// Each step loads 8 bf16 of each of the R weight rows (VPMOVZXWD from 128 bits, VPSLLD by 16) and
// FMAs them against the same 8 floats of each of the M activation rows, so every widened weight
// vector serves M rows and every activation vector R rows. M·R accumulators + M activations + one
// weight vector fit the 16 ymm registers with M·R <= 8 (checked in the disassembly: no spills).
// Several weight rows at once also give the FMAs independent dependency chains and let the
// horizontal sums, done once per output, be amortised over k.

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

// bf16_tile_avx2 computes the M×R block of outputs dst[i*ldc + r] for weight rows w[r*k...].
// M and R are compile-time constants at every call site (always_inline), so the loops unroll and
// acc lives in registers.
__attribute__((target("avx2,fma"), always_inline))
static inline void bf16_tile_avx2(const int M, const int R, int k, const float *a,
		const uint16_t *w, float *dst, int ldc, int accumulate) {
	__m256 acc[4][8];
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			acc[i][r] = _mm256_setzero_ps();
		}
	}
	int p = 0;
	for (; p + 32 <= k; p += 32) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			_mm_prefetch((const char *)(w + (size_t)r * k + p) + BF16_PREFETCH, _MM_HINT_T0);
		}
#pragma GCC unroll 4
		for (int u = 0; u < 32; u += 8) {
			__m256 x[4];
#pragma GCC unroll 4
			for (int i = 0; i < M; i++) {
				x[i] = _mm256_loadu_ps(a + (size_t)i * k + p + u);
			}
#pragma GCC unroll 8
			for (int r = 0; r < R; r++) {
				__m256 wv = bf16x8_avx2(w + (size_t)r * k + p + u);
#pragma GCC unroll 4
				for (int i = 0; i < M; i++) {
					acc[i][r] = _mm256_fmadd_ps(wv, x[i], acc[i][r]);
				}
			}
		}
	}
	for (; p + 8 <= k; p += 8) {
		__m256 x[4];
#pragma GCC unroll 4
		for (int i = 0; i < M; i++) {
			x[i] = _mm256_loadu_ps(a + (size_t)i * k + p);
		}
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			__m256 wv = bf16x8_avx2(w + (size_t)r * k + p);
#pragma GCC unroll 4
			for (int i = 0; i < M; i++) {
				acc[i][r] = _mm256_fmadd_ps(wv, x[i], acc[i][r]);
			}
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			float s = hsum_avx2(acc[i][r]);
			for (int q = p; q < k; q++) {
				s += bf16_scalar(w[(size_t)r * k + q]) * a[(size_t)i * k + q];
			}
			float *d = dst + (size_t)i * ldc + r;
			*d = accumulate ? *d + s : s;
		}
	}
}

// bf16_rows_avx2_m runs tiles of R weight rows over all n rows, then single rows for the rest.
#define BF16_ROWS_AVX2(M, R)                                                                      \
	__attribute__((target("avx2,fma"))) static void bf16_rows_avx2_##M(int k, const float *a,  \
			const uint16_t *w, int n, float *dst, int ldc, int accumulate) {                  \
		int j = 0;                                                                            \
		for (; j + R <= n; j += R) {                                                          \
			bf16_tile_avx2(M, R, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);      \
		}                                                                                     \
		for (; j < n; j++) {                                                                  \
			bf16_tile_avx2(M, 1, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);      \
		}                                                                                     \
	}

BF16_ROWS_AVX2(1, 8)
BF16_ROWS_AVX2(2, 4)
BF16_ROWS_AVX2(3, 2)
BF16_ROWS_AVX2(4, 2)

void pregate_bf16_rows_avx2(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate) {
	switch (m) {
	case 1:
		bf16_rows_avx2_1(k, a, w, n, dst, ldc, accumulate);
		break;
	case 2:
		bf16_rows_avx2_2(k, a, w, n, dst, ldc, accumulate);
		break;
	case 3:
		bf16_rows_avx2_3(k, a, w, n, dst, ldc, accumulate);
		break;
	default: // 4; m > 4 rows go through the f32 GEMM (bf16RowsNT)
		bf16_rows_avx2_4(k, a, w, n, dst, ldc, accumulate);
		break;
	}
}

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

#endif
