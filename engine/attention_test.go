package engine

import (
	"math"
	"testing"
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
		a := attention{heads: 1, kvHeads: 1, headDim: 1, scale: 1, causal: true, past: 3, window: tt.window}
		out := make([]float32, 1)
		a.run(newCPU(t, 1), out, []float32{1}, k, v, 1, 4)
		if math.Abs(float64(out[0])-tt.want) > 1e-4 {
			t.Errorf("window %d: %v, want %v", tt.window, out[0], tt.want)
		}
	}
}
