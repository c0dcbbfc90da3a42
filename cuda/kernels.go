//go:build cuda

package cuda

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// kernels are the functions of kernels/kernels.cu, looked up once when the device opens.
type kernels struct {
	gemvBF16 [gemvMaxM + 1]function // [m], m = 1..8: 128-bit loads, k a multiple of 8, gemvRows(m) rows per group
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

// table lists every kernel with the field that holds it.
func (k *kernels) table() []kernelEntry {
	t := []kernelEntry{
		{&k.gemvScalar, "gemv_scalar"},
		{&k.gemmF32, "gemm_f32"}, {&k.gemmBF16, "gemm_bf16"},
		{&k.rmsnorm, "rmsnorm"}, {&k.softmax, "softmax_rows"},
		{&k.relu, "relu"}, {&k.gelu, "gelu_tanh"}, {&k.silu, "silu"},
		{&k.mul, "mul"}, {&k.add, "add"}, {&k.scale, "scale"},
		{&k.rope, "rope"}, {&k.embed, "embed"}, {&k.gather, "gather_rows"}, {&k.scatterAdd, "scatter_add_rows"},
		{&k.attention, "attention"},
	}
	for i := 1; i <= gemvMaxM; i++ {
		r := gemvRows(i)
		t = append(t, kernelEntry{&k.gemvBF16[i], fmt.Sprintf("gemv_bf16_m%dr%d", i, r)}, kernelEntry{&k.gemvF32[i], fmt.Sprintf("gemv_f32_m%dr%d", i, r)})
	}
	return t
}

// gemvRows is the number of output rows a thread group of the decode kernel for m rows of x owns
// (R in kernels.cu, where each kernel's name carries it): each chunk of x a thread loads serves R
// weight rows, so that with m > 1 the reads of x do not outnumber the weight bytes.
func gemvRows(m int) int {
	switch {
	case m <= 1:
		return 1
	case m <= 3:
		return 2
	}
	return 4
}

type kernelEntry struct {
	dst  *function
	name string
}

// load looks every kernel up in the module loaded from ptx, with its parameter signature.
func (k *kernels) load(c ctx, m module, ptx []byte) error {
	sigs := signatures(ptx)
	for _, e := range k.table() {
		sig, ok := sigs[e.name]
		if !ok {
			return fmt.Errorf("cuda: the kernels' PTX has no entry %s", e.name)
		}
		f, err := c.function(m, e.name)
		if err != nil {
			return err
		}
		f.name, f.sig = e.name, sig
		*e.dst = f
	}
	return nil
}

// signatures reads each kernel's parameter kinds from PTX: "p" for a 64-bit parameter (a device
// pointer), "i" for a 32-bit integer, "f" for a float, "?" for anything else. A launch checks its
// arguments against them, so a Go call site that disagrees with kernels.cu is an error at the
// launch, not memory corruption on the device.
func signatures(ptx []byte) map[string]string {
	sigs := map[string]string{}
	var name string
	var sig strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(ptx))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, ".visible .entry "); ok {
			name, _, _ = strings.Cut(rest, "(")
			sig.Reset()
			continue
		}
		if name == "" {
			continue
		}
		if t, ok := strings.CutPrefix(line, ".param "); ok {
			switch {
			case strings.HasPrefix(t, ".u64 "), strings.HasPrefix(t, ".b64 "), strings.HasPrefix(t, ".s64 "):
				sig.WriteByte('p')
			case strings.HasPrefix(t, ".u32 "), strings.HasPrefix(t, ".s32 "), strings.HasPrefix(t, ".b32 "):
				sig.WriteByte('i')
			case strings.HasPrefix(t, ".f32 "):
				sig.WriteByte('f')
			default:
				sig.WriteByte('?')
			}
			continue
		}
		if strings.HasPrefix(line, ")") {
			sigs[name] = sig.String()
			name = ""
		}
	}
	return sigs
}
