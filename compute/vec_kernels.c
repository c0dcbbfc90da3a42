//go:build cgo && !purego

// Vector kernels for the CPU backend's attention and SiLU (vec_cgo.go calls them; the pure-Go build
// and CPUs without AVX2 use kernels.go's loops).
//
// Why: a decode step's attention is, per head, n dot products of length hd (the scores) and a
// weighted sum of n rows of length hd (the output), and Go compiles both to scalar SSE code; SiLU
// went through float64 math.Exp. perf of a 1-thread mixtral-bench bf16 decode put them at 4.8% and
// 2.1% of the run (docs/BENCHMARKS.md, issue 16 part 5). Compiled per instruction set through target
// attributes, as bf16_kernels.c; each call covers a whole head's keys or a whole activation vector,
// so cgo's ~50ns per call stays small against it.

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include "vec_kernels.h"

#if defined(__x86_64__)

#include <immintrin.h>

// ---- dots: out[j] = scale · Σ_l q[l]·k[j·ks + l], j < n ----

__attribute__((target("avx512f")))
void pregate_dots_avx512(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out) {
	const __mmask16 tail = (__mmask16)((1u << (hd & 15)) - 1);
	const int full = hd & ~15;
	for (int j = 0; j < n; j++) {
		const float *kj = k + (size_t)j * ks;
		__m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
		int l = 0;
		for (; l + 32 <= full; l += 32) {
			a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + l), _mm512_loadu_ps(kj + l), a0);
			a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + l + 16), _mm512_loadu_ps(kj + l + 16), a1);
		}
		for (; l < full; l += 16) {
			a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + l), _mm512_loadu_ps(kj + l), a0);
		}
		if (tail) {
			a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + l), _mm512_maskz_loadu_ps(tail, kj + l), a1);
		}
		out[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
	}
}

__attribute__((target("avx2,fma")))
void pregate_dots_avx2(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out) {
	const int full = hd & ~7;
	for (int j = 0; j < n; j++) {
		const float *kj = k + (size_t)j * ks;
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
		int l = 0;
		for (; l + 16 <= full; l += 16) {
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + l), _mm256_loadu_ps(kj + l), a0);
			a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + l + 8), _mm256_loadu_ps(kj + l + 8), a1);
		}
		for (; l < full; l += 8) {
			a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + l), _mm256_loadu_ps(kj + l), a0);
		}
		__m256 s = _mm256_add_ps(a0, a1);
		__m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
		h = _mm_add_ps(h, _mm_movehl_ps(h, h));
		h = _mm_add_ss(h, _mm_movehdup_ps(h));
		float d = _mm_cvtss_f32(h);
		for (; l < hd; l++) {
			d += q[l] * kj[l];
		}
		out[j] = d * scale;
	}
}

// ---- wsum: out[l] += Σ_j p[j]·v[j·vs + l], l < hd ----
// Blocks of 4 vectors of out stay in registers while every row of v is added into them.

__attribute__((target("avx512f")))
void pregate_wsum_avx512(const float *p, const float *v, size_t vs, int n, int hd, float *out) {
	int l = 0;
	for (; l + 64 <= hd; l += 64) {
		__m512 o0 = _mm512_loadu_ps(out + l), o1 = _mm512_loadu_ps(out + l + 16);
		__m512 o2 = _mm512_loadu_ps(out + l + 32), o3 = _mm512_loadu_ps(out + l + 48);
		for (int j = 0; j < n; j++) {
			const float *vj = v + (size_t)j * vs + l;
			__m512 pj = _mm512_set1_ps(p[j]);
			o0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), o0);
			o1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), o1);
			o2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), o2);
			o3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), o3);
		}
		_mm512_storeu_ps(out + l, o0);
		_mm512_storeu_ps(out + l + 16, o1);
		_mm512_storeu_ps(out + l + 32, o2);
		_mm512_storeu_ps(out + l + 48, o3);
	}
	for (; l < hd; l += 16) {
		const __mmask16 m = hd - l >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (hd - l)) - 1);
		__m512 o = _mm512_maskz_loadu_ps(m, out + l);
		for (int j = 0; j < n; j++) {
			o = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, v + (size_t)j * vs + l), o);
		}
		_mm512_mask_storeu_ps(out + l, m, o);
	}
}

__attribute__((target("avx2,fma")))
void pregate_wsum_avx2(const float *p, const float *v, size_t vs, int n, int hd, float *out) {
	int l = 0;
	for (; l + 32 <= hd; l += 32) {
		__m256 o0 = _mm256_loadu_ps(out + l), o1 = _mm256_loadu_ps(out + l + 8);
		__m256 o2 = _mm256_loadu_ps(out + l + 16), o3 = _mm256_loadu_ps(out + l + 24);
		for (int j = 0; j < n; j++) {
			const float *vj = v + (size_t)j * vs + l;
			__m256 pj = _mm256_set1_ps(p[j]);
			o0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), o0);
			o1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), o1);
			o2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), o2);
			o3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), o3);
		}
		_mm256_storeu_ps(out + l, o0);
		_mm256_storeu_ps(out + l + 8, o1);
		_mm256_storeu_ps(out + l + 16, o2);
		_mm256_storeu_ps(out + l + 24, o3);
	}
	for (; l + 8 <= hd; l += 8) {
		__m256 o = _mm256_loadu_ps(out + l);
		for (int j = 0; j < n; j++) {
			o = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + (size_t)j * vs + l), o);
		}
		_mm256_storeu_ps(out + l, o);
	}
	for (; l < hd; l++) {
		float o = out[l];
		for (int j = 0; j < n; j++) {
			o += p[j] * v[(size_t)j * vs + l];
		}
		out[l] = o;
	}
}

// ---- SiLU: x / (1 + e^-x) ----
//
// e^-x in float32 as Cephes' expf: n = round(a·log2 e), r = a − n·ln 2 with ln 2 split in two
// (Cody-Waite, so r is nearly exact for |a| <= 80), e^r = 1 + (r + r²·P(r)) with Cephes' degree-5
// P (the 1 added last, so only the final sum rounds at full weight), times 2^n built in the
// exponent bits; then 1 + e and the division round once each. Error, in units of float32 roundoff
// u = 2^-24 relative (the conformance suite's unit, which allows 4): worst 2.79 u over 2^20 points
// spread over [-90, 90] (TestSiLUKernels, which holds it to 3 u; the float64 Go loop: 1.2 u). Lanes
// with |x| > 80 or NaN (where 2^n would leave the normal range) are recomputed in float64.

#define SILU_MAX 80.0f

static inline float silu_scalar(float x) {
	double f = x;
	return (float)(f / (1 + exp(-f)));
}

__attribute__((target("avx512f")))
void pregate_silu_avx512(float *x, size_t n) {
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);
		__m512 a = _mm512_sub_ps(_mm512_setzero_ps(), v); // e^a, a = −x
		__m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)),
			_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		__m512 r = _mm512_fmadd_ps(fx, _mm512_set1_ps(-0.693359375f), a);
		r = _mm512_fmadd_ps(fx, _mm512_set1_ps(2.12194440e-4f), r);
		__m512 y = _mm512_set1_ps(1.9875691500E-4f);
		y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
		y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
		y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
		y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
		y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
		y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
		__m512i e2 = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
		__m512 e = _mm512_mul_ps(y, _mm512_castsi512_ps(e2));
		__m512 s = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
		__mmask16 ok = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(SILU_MAX), _CMP_LE_OQ);
		_mm512_storeu_ps(x + i, s);
		if (ok != 0xffff) {
			float in[16];
			_mm512_storeu_ps(in, v);
			for (int l = 0; l < 16; l++) {
				if (!(ok >> l & 1)) {
					x[i + l] = silu_scalar(in[l]);
				}
			}
		}
	}
	for (; i < n; i++) {
		x[i] = silu_scalar(x[i]);
	}
}

__attribute__((target("avx2,fma")))
void pregate_silu_avx2(float *x, size_t n) {
	const __m256 sign = _mm256_set1_ps(-0.0f);
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		__m256 a = _mm256_xor_ps(v, sign);
		__m256 fx = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504088896341f)),
			_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		__m256 r = _mm256_fmadd_ps(fx, _mm256_set1_ps(-0.693359375f), a);
		r = _mm256_fmadd_ps(fx, _mm256_set1_ps(2.12194440e-4f), r);
		__m256 y = _mm256_set1_ps(1.9875691500E-4f);
		y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
		y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
		y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
		y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
		y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
		y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
		__m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
		__m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(e2));
		__m256 s = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
		int ok = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(SILU_MAX), _CMP_LE_OQ));
		_mm256_storeu_ps(x + i, s);
		if (ok != 0xff) {
			float in[8];
			_mm256_storeu_ps(in, v);
			for (int l = 0; l < 8; l++) {
				if (!(ok >> l & 1)) {
					x[i + l] = silu_scalar(in[l]);
				}
			}
		}
	}
	for (; i < n; i++) {
		x[i] = silu_scalar(x[i]);
	}
}

#else // not x86-64: never called (vecKernel reports none there)

#include <stdlib.h>

void pregate_dots_avx512(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out) { abort(); }
void pregate_dots_avx2(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out) { abort(); }
void pregate_wsum_avx512(const float *p, const float *v, size_t vs, int n, int hd, float *out) { abort(); }
void pregate_wsum_avx2(const float *p, const float *v, size_t vs, int n, int hd, float *out) { abort(); }
void pregate_silu_avx512(float *x, size_t n) { abort(); }
void pregate_silu_avx2(float *x, size_t n) { abort(); }

#endif
