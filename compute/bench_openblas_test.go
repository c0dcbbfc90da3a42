//go:build cgo && !purego

package compute

func init() {
	blasGEMV1 = []gemvVariant{
		{"openblas-sgemv", blasSgemv},
		{"openblas-sgemm", func(dst, x []float32, k int, w []float32, n int) { blasSgemmNT(dst, x, 1, k, w, n) }},
	}
}
