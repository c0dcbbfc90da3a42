// The fused bf16 GEMV kernel, written once and included by bf16_kernels.c once per instruction set
// (a C template). The includer defines:
//
//	ISA            suffix of the generated names (avx2, avx512)
//	TARGET         the target attribute the code is compiled for ("avx2,fma", "avx512f")
//	VEC, LANES     the float vector type and its number of floats
//	vzero()        a zero vector
//	vloadf(p)      LANES floats from p (unaligned)
//	vwiden(p)      LANES bf16 from p (unaligned), widened to floats
//	vfma(a, b, c)  a·b + c
//	vhsum(v)       the sum of v's lanes
//	R1 .. R4       the weight-row tile for 1 .. 4 activation rows (M·R accumulators must fit the
//	               vector registers along with M activation vectors and a weight vector)
//	WT, WSIZE      the weights' C type and its bytes (uint16_t, 2 for bf16; float, 4 for f32)
//	WLINE          weights per 64-byte cache line (64 / WSIZE)
//	wscalar(x)     one weight as a float (the tail of a row)
//	ROWS_NAME      the name of the generated function (bf16_kernels.h)
//
// and gets ROWS_NAME, e.g. pregate_bf16_rows_avx512 (vwiden(p) loads LANES weights as floats). The
// parameters are undefined at the end of this file.

#define BF16_CAT_(a, b) a##b
#define BF16_CAT(a, b) BF16_CAT_(a, b)
#define BF16_FN(name) BF16_CAT(name, ISA)

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
		BF16_FN(bf16_rows_)(1, R1, k, a, w, n, dst, ldc, accumulate);
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

// The includer's parameters, so that it can define them afresh for the next instance.
#undef ISA
#undef TARGET
#undef VEC
#undef LANES
#undef vzero
#undef vloadf
#undef vwiden
#undef vfma
#undef vhsum
#undef R1
#undef R2
#undef R3
#undef R4
#undef WT
#undef WSIZE
#undef WLINE
#undef wscalar
#undef ROWS_NAME
