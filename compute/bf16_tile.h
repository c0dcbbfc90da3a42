// The fused bf16 GEMV kernel, written once and included by bf16_kernels.c once per instruction set
// and weight type (a C template). Per instruction set the includer defines:
//
//	TARGET         the target attribute the code is compiled for ("avx2,fma", "avx512f")
//	VEC, LANES     the float vector type and its number of floats
//	vzero()        a zero vector
//	vloadf(p)      LANES floats from p (unaligned)
//	vfma(a, b, c)  a·b + c
//	vhsum(v)       the sum of v's lanes
//	vadd(a, b)     a + b
//	vloadf_first(p, c)  the first c floats from p (1 <= c <= LANES), the other lanes zero
//	vloadf_last(p, c)   the last c floats of the LANES from p (1 <= c < LANES), the others zero
//	R2 .. R4       the weight-row tile for 2 .. 4 activation rows (M·R accumulators must fit the
//	               vector registers along with M activation vectors and a weight vector)
//
// and undefines them after its instances (bf16_tile_isa_end.h); per instance, which this file
// undefines at its end:
//
//	ISA            suffix of the generated names (avx2, f32_avx512, ...)
//	WT             the weights' C type: uint16_t (bf16 bits) or float
//	vwiden(p)      LANES weights from p (unaligned) as floats
//	wscalar(x)     one weight as a float (the tail of a row)
//	ROWS_NAME      the name of the generated function (bf16_kernels.h)
//
// and gets ROWS_NAME, e.g. pregate_bf16_rows_avx512.

#define BF16_CAT_(a, b) a##b
#define BF16_CAT(a, b) BF16_CAT_(a, b)
#define BF16_FN(name) BF16_CAT(name, ISA)
#define WSIZE ((int)sizeof(WT)) // the weights' bytes
#define WLINE (64 / WSIZE)      // weights per 64-byte cache line

// One step of LANES weights at offset p: the LANES floats of each of the M activation rows times
// the widened weights of each of the R weight rows, into acc.
__attribute__((target(TARGET), always_inline))
static inline void BF16_FN(bf16_step_)(const int M, const int R, int k, const float *a,
		const WT *w, int p, VEC acc[4][8]) {
	VEC x[4];
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
		x[i] = vloadf(a + (size_t)i * k + p);
	}
#pragma GCC unroll 8
	for (int r = 0; r < R; r++) {
		VEC wv = vwiden(w + (size_t)r * k + p);
#pragma GCC unroll 4
		for (int i = 0; i < M; i++) {
			acc[i][r] = vfma(wv, x[i], acc[i][r]);
		}
	}
}

// The M×R block of outputs dst[i*ldc + r] for weight rows w[r*k ...]. M and R are compile-time
// constants at every call site (always_inline), so the loops unroll and acc lives in registers.
__attribute__((target(TARGET), always_inline))
static inline void BF16_FN(bf16_tile_)(const int M, const int R, int k, const float *a,
		const WT *w, float *dst, int ldc, int accumulate) {
	VEC acc[4][8];
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			acc[i][r] = vzero();
		}
	}
	int p = 0;
	// How far ahead each row's prefetch reaches (bf16_kernels.c): the same line of the next
	// tile's row when the tile is small, else BF16_PREFETCH bytes further along the row.
	const size_t ahead = (size_t)R * k * WSIZE <= BF16_NEXT_TILE_MAX ? (size_t)R * k * WSIZE : BF16_PREFETCH;
	// A 64-byte cache line (WLINE weights) of each weight row per iteration, prefetching ahead.
	for (; p + WLINE <= k; p += WLINE) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			_mm_prefetch((const char *)(w + (size_t)r * k + p) + ahead, _MM_HINT_T0);
		}
#pragma GCC unroll 4
		for (int u = 0; u < WLINE; u += LANES) {
			BF16_FN(bf16_step_)(M, R, k, a, w, p + u, acc);
		}
	}
	for (; p + LANES <= k; p += LANES) {
		BF16_FN(bf16_step_)(M, R, k, a, w, p, acc);
	}
#pragma GCC unroll 4
	for (int i = 0; i < M; i++) {
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			float s = vhsum(acc[i][r]);
			for (int q = p; q < k; q++) {
				s += wscalar(w[(size_t)r * k + q]) * a[(size_t)i * k + q];
			}
			float *d = dst + (size_t)i * ldc + r;
			*d = accumulate ? *d + s : s;
		}
	}
}

// bf16_seq1_<ISA>: the m = 1 case (batch-1 decode), one weight row at a time, front to back, with
// four accumulators so that the FMAs' latency is hidden. Reading the weights as one sequential
// stream, without the tile's per-row software prefetches, is what the hardware prefetcher serves
// best: on the Zen 5
// machine of docs/BENCHMARKS.md (issue 16 part 5) a 1×1024·1024×3584 product streamed f32 at 40.7
// GB/s this way against 31.5 for the 1×8 tile with its prefetches (the machine's read bandwidth,
// scripts/peer/membw.c: 40.3), and bf16 at 37.8 against 31.2. An activation row serves only one
// weight row at m = 1, so the tile's reuse buys nothing there; from m = 2 on it does.
//
// bf16 rows also prefetch the lines BF16_SEQ_PREFETCH ahead: the hardware prefetcher does not cross
// a 4 KiB page, and a bf16 step issues twice the instructions per line that an f32 one does, so
// fewer lines are in flight without it (bf16 at 16 mod 64, 21 interleaved rounds: 31.9 against
// 30.8 GB/s at k = 1024, 35.4 against 33.3 at k = 3584; f32 gained nothing).
//
// Misaligned weights: safetensors places tensors 8-byte aligned (the mixtral-bench files at 16 mod
// 64), and a vector load that straddles two cache lines costs two. With head > 0 (the elements
// before each row's first 64-byte boundary, the same for every row) the loads of each row start at
// that boundary; the activations, a copy placed to be aligned at the same elements (bf16_gemv1_),
// then are too. The head, and the last elements after the whole steps, take one vector of weights
// each, from the row's start and up to its end, with the activations outside the range masked to
// zero (vloadf_first, vloadf_last): nothing is read outside the row, and no element runs through
// a serial scalar chain. Where a row starts sets the summation order, as in any BLAS that peels
// for alignment.
__attribute__((target(TARGET), always_inline))
static inline void BF16_FN(bf16_seq1_)(int k, const float *a, const WT *w, int n, float *dst,
		int accumulate, int head) {
	for (int j = 0; j < n; j++) {
		const WT *r = w + (size_t)j * k;
		VEC s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
		int p = head;
		for (int q = 0; q < head; q += LANES) {
			s1 = vfma(vwiden(r + q), vloadf_first(a + q, head - q < LANES ? head - q : LANES), s1);
		}
		for (; p + 4 * LANES <= k; p += 4 * LANES) {
			if (WSIZE == 2) {
#pragma GCC unroll 2
				for (int b = 0; b < 4 * LANES * WSIZE; b += 64) {
					_mm_prefetch((const char *)(r + p) + BF16_SEQ_PREFETCH + b, _MM_HINT_T0);
				}
			}
			s0 = vfma(vwiden(r + p), vloadf(a + p), s0);
			s1 = vfma(vwiden(r + p + LANES), vloadf(a + p + LANES), s1);
			s2 = vfma(vwiden(r + p + 2 * LANES), vloadf(a + p + 2 * LANES), s2);
			s3 = vfma(vwiden(r + p + 3 * LANES), vloadf(a + p + 3 * LANES), s3);
		}
		float s = 0;
		if (k >= LANES) {
			// At most three whole vectors and a part of one are left.
			if (p + LANES <= k) {
				s0 = vfma(vwiden(r + p), vloadf(a + p), s0);
				p += LANES;
			}
			if (p + LANES <= k) {
				s1 = vfma(vwiden(r + p), vloadf(a + p), s1);
				p += LANES;
			}
			if (p + LANES <= k) {
				s2 = vfma(vwiden(r + p), vloadf(a + p), s2);
				p += LANES;
			}
			if (p < k) {
				s3 = vfma(vwiden(r + k - LANES), vloadf_last(a + k - LANES, k - p), s3);
			}
		} else {
			for (; p < k; p++) {
				s += wscalar(r[p]) * a[p];
			}
		}
		s += vhsum(vadd(vadd(s0, s1), vadd(s2, s3)));
		dst[j] = accumulate ? dst[j] + s : s;
	}
}

// bf16_gemv1_<ISA>: m = 1. Where each weight load is a whole cache line (f32 in zmm registers),
// rows whose start is misaligned the same way (a row a multiple of 64 bytes long) get the peeled
// loop with a copy of the activations shifted to match: on one 256 MiB buffer, 1×1024·1024×3584
// streamed 32.2 GB/s at 16 and 32 mod 64 unpeeled against 39.7 peeled (AMD EPYC Zen 5, 1 thread,
// 11 interleaved rounds; 1×3584·3584×1024: 29.6 against 37.3). With 32-byte loads (bf16 in zmm,
// f32 in ymm) only every other load splits, and the peeled loop measured slower, not faster
// (f32 AVX2 at 32 mod 64: 30.7 against 38.4 unpeeled; bf16 AVX-512 at 16: 20.1 against 30.8), for
// a reason this VM, without performance counters, did not show; those rows run unpeeled. The copy
// is k floats per call, next to 512 KiB of weights.
__attribute__((target(TARGET), always_inline))
static inline void BF16_FN(bf16_gemv1_)(int k, const float *a, const WT *w, int n, float *dst,
		int accumulate) {
	const size_t off = (uintptr_t)w & 63;
	float *buf = NULL;
	if (LANES * WSIZE == 64 && off != 0 && off % WSIZE == 0 && ((size_t)k * WSIZE) % 64 == 0 &&
			k >= 6 * LANES) {
		buf = gemv1_scratch(k + 16);
	}
	if (buf == NULL) {
		BF16_FN(bf16_seq1_)(k, a, w, n, dst, accumulate, 0);
		return;
	}
	float *shifted = buf + (off * 4 / WSIZE) % 64 / 4;
	memcpy(shifted, a, (size_t)k * sizeof(float));
	BF16_FN(bf16_seq1_)(k, shifted, w, n, dst, accumulate, (int)((64 - off) / WSIZE));
}

// bf16_rows_<ISA>: tiles of R weight rows over all n rows, then single rows for the rest.
__attribute__((target(TARGET), always_inline))
static inline void BF16_FN(bf16_rows_)(const int M, const int R, int k, const float *a,
		const WT *w, int n, float *dst, int ldc, int accumulate) {
	int j = 0;
	for (; j + R <= n; j += R) {
		BF16_FN(bf16_tile_)(M, R, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);
	}
	for (; j < n; j++) {
		BF16_FN(bf16_tile_)(M, 1, k, a, w + (size_t)j * k, dst + j, ldc, accumulate);
	}
}

__attribute__((target(TARGET)))
void ROWS_NAME(int m, int k, const float *a, const WT *w, int n,
		float *dst, int ldc, int accumulate) {
	switch (m) {
	case 1:
		BF16_FN(bf16_gemv1_)(k, a, w, n, dst, accumulate);
		break;
	case 2:
		BF16_FN(bf16_rows_)(2, R2, k, a, w, n, dst, ldc, accumulate);
		break;
	case 3:
		BF16_FN(bf16_rows_)(3, R3, k, a, w, n, dst, ldc, accumulate);
		break;
	default: // 4; more rows go through the f32 GEMM (bf16RowsNT)
		BF16_FN(bf16_rows_)(4, R4, k, a, w, n, dst, ldc, accumulate);
		break;
	}
}

#undef BF16_FN
#undef BF16_CAT
#undef BF16_CAT_

#undef WSIZE
#undef WLINE

// The instance's parameters, so that the includer can define them afresh for the next one.
#undef ISA
#undef WT
#undef vwiden
#undef wscalar
#undef ROWS_NAME
