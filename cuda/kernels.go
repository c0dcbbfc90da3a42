//go:build cuda

package cuda

import "fmt"

// kernels are the functions of kernels/kernels.cu, looked up once when the device opens.
type kernels struct {
	gemvBF16 [gemvMaxM + 1]function // [m], m = 1..8: 128-bit loads, k a multiple of 8
	gemvF32  [gemvMaxM + 1]function
	gemvScalar,
	gemmF32, gemmBF16,
	rmsnorm, softmax,
	relu, gelu, silu, mul, add, scale,
	rope, embed, gather, scatterAdd,
	attention function
}

// Launch constants shared with kernels.cu.
const (
	gemvMaxM       = 8   // GEMV_MAX_M: the largest m of the decode kernels
	gemvThreads    = 256 // GEMV_THREADS
	gemmTile       = 64  // TM, TN
	rowThreads     = 256 // ROW_THREADS: rmsnorm, softmax
	attWarps       = 8   // ATT_WARPS
	attMaxHeadDim  = 256 // ATT_MAX_HD
	elementThreads = 256
	maxGridY       = 65535
)

func (k *kernels) load(c ctx, m module) error {
	get := func(dst *function, name string) error {
		f, err := c.function(m, name)
		if err != nil {
			return err
		}
		*dst = f
		return nil
	}
	for i := 1; i <= gemvMaxM; i++ {
		if err := get(&k.gemvBF16[i], fmt.Sprintf("gemv_bf16_m%d", i)); err != nil {
			return err
		}
		if err := get(&k.gemvF32[i], fmt.Sprintf("gemv_f32_m%d", i)); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		dst  *function
		name string
	}{
		{&k.gemvScalar, "gemv_scalar"},
		{&k.gemmF32, "gemm_f32"}, {&k.gemmBF16, "gemm_bf16"},
		{&k.rmsnorm, "rmsnorm"}, {&k.softmax, "softmax_rows"},
		{&k.relu, "relu"}, {&k.gelu, "gelu_tanh"}, {&k.silu, "silu"},
		{&k.mul, "mul"}, {&k.add, "add"}, {&k.scale, "scale"},
		{&k.rope, "rope"}, {&k.embed, "embed"}, {&k.gather, "gather_rows"}, {&k.scatterAdd, "scatter_add_rows"},
		{&k.attention, "attention"},
	} {
		if err := get(f.dst, f.name); err != nil {
			return err
		}
	}
	return nil
}
