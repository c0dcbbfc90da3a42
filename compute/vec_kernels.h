// Prototypes of vec_kernels.c, for vec_cgo.go's cgo preamble.
#include <stddef.h>

void pregate_dots_avx512(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out);
void pregate_dots_avx2(const float *q, const float *k, size_t ks, int n, int hd, float scale, float *out);
void pregate_wsum_avx512(const float *p, const float *v, size_t vs, int n, int hd, float *out);
void pregate_wsum_avx2(const float *p, const float *v, size_t vs, int n, int hd, float *out);
void pregate_silu_avx512(float *x, size_t n);
void pregate_silu_avx2(float *x, size_t n);
