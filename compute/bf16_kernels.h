// Prototypes of bf16_kernels.c, for gemm_openblas.go's cgo preamble.
#include <stddef.h>
#include <stdint.h>

void pregate_bf16_rows_avx512(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate);
void pregate_bf16_rows_avx2(int m, int k, const float *a, const uint16_t *w, int n,
		float *dst, int ldc, int accumulate);
void pregate_convert_bf16_avx2(float *dst, const uint16_t *src, size_t n);
void pregate_f32_rows_avx512(int m, int k, const float *a, const float *w, int n,
		float *dst, int ldc, int accumulate);
void pregate_f32_rows_avx2(int m, int k, const float *a, const float *w, int n,
		float *dst, int ldc, int accumulate);
