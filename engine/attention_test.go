package engine

import (
	"math"
	"testing"

	"github.com/pregate/pregate/compute"
)

func TestSlidingWindowAttention(t *testing.T) {
	// One head, head_dim 1, q = 1 and keys 0, 1, 2, 3 with values 10, 20, 30, 40: with window 2
	// the query at position 3 sees keys 2 and 3 only.
	k := []float32{0, 1, 2, 3}
	v := []float32{10, 20, 30, 40}
	for _, tt := range []struct {
		window int
		want   float64
	}{
		{0, (10 + 20*math.E + 30*math.E*math.E + 40*math.E*math.E*math.E) / (1 + math.E + math.E*math.E + math.E*math.E*math.E)},
		{2, (30 + 40*math.E) / (1 + math.E)},
		{1, 40},
	} {
		a := compute.Attention{Heads: 1, KVHeads: 1, HeadDim: 1, Scale: 1, Causal: true, Past: 3, Window: tt.window}
		out := make([]float32, 1)
		h := compute.HostTensor
		newCPU(t, 1).Attention(h(out), h([]float32{1}), h(k), h(v), 1, 4, &a)
		if math.Abs(float64(out[0])-tt.want) > 1e-4 {
			t.Errorf("window %d: %v, want %v", tt.window, out[0], tt.want)
		}
	}
}
