package routing

import (
	"math"
	"testing"
)

func TestRouteTop1Capacity(t *testing.T) {
	// 2 sequences (3 and 2 tokens), 3 experts, capacity 1 per sequence.
	logits := []float32{
		0, 5, 0, // -> 1
		0, 6, 0, // -> 1 (dropped: second for expert 1 in seq 0)
		7, 0, 0, // -> 0
		0, 5, 0, // seq 1 -> 1
		0, 0, 9, // -> 2
	}
	g := Gate{TopK: 1, Capacity: 1}
	out := make([]Choice, 5)
	g.Route(logits, 3, []int{3, 2}, out, nil)
	want := []int{1, -1, 0, 1, 2}
	for i, c := range out {
		if c.Expert != want[i] {
			t.Fatalf("token %d: expert %d, want %d (all %v)", i, c.Expert, want[i], out)
		}
	}
	p := float32(math.Exp(5) / (math.Exp(5) + 2))
	if d := out[0].Weight - p; d > 1e-6 || d < -1e-6 {
		t.Fatalf("weight %v, want %v", out[0].Weight, p)
	}
}

// TestCountCapacityInParts: one sequence's top-2 choices counted in parts, carrying the counts,
// drop what ApplyCapacity drops counting them at once.
func TestCountCapacityInParts(t *testing.T) {
	mk := func() []Choice {
		var cs []Choice
		for i := range 12 {
			cs = append(cs, Choice{Expert: i % 3}, Choice{Expert: (i + 1) % 3})
		}
		cs[5].Expert = -1 // already dropped: not counted
		return cs
	}
	whole, parts := mk(), mk()
	ApplyCapacity(whole, 2, 3, nil, 5)
	counts := make([]int, 3)
	for _, cut := range [][2]int{{0, 3}, {3, 4}, {4, 11}, {11, 12}} {
		CountCapacity(parts[cut[0]*2:cut[1]*2], counts, 5)
	}
	dropped := 0
	for i := range whole {
		if whole[i] != parts[i] {
			t.Fatalf("choice %d: %v in parts, %v at once", i, parts[i], whole[i])
		}
		if whole[i].Expert < 0 {
			dropped++
		}
	}
	if dropped != 1+(23-15) { // the one marked, and all past 5 per expert of the 23 counted
		t.Fatalf("%d dropped, want %d", dropped, 1+23-15)
	}
}

func TestRouteTop2Renormalize(t *testing.T) {
	tests := []struct {
		give   []float32
		want   []int
		wantW0 float32
	}{
		{give: []float32{1, 3, 2, 0}, want: []int{1, 2}, wantW0: float32(math.E / (math.E + 1))},
		{give: []float32{2, 2, 2, 1}, want: []int{0, 1}, wantW0: 0.5}, // ties: lower index first
		{give: []float32{0, 0, 0, 5}, want: []int{3, 0}},
	}
	for _, tt := range tests {
		out := make([]Choice, 2)
		Gate{TopK: 2, Renormalize: true}.Route(tt.give, 4, nil, out, nil)
		if out[0].Expert != tt.want[0] || out[1].Expert != tt.want[1] {
			t.Errorf("Route(%v) = %v, want experts %v", tt.give, out, tt.want)
		}
		if s := out[0].Weight + out[1].Weight; math.Abs(float64(s-1)) > 1e-6 {
			t.Errorf("Route(%v): weights sum to %v", tt.give, s)
		}
		if tt.wantW0 != 0 && math.Abs(float64(out[0].Weight-tt.wantW0)) > 1e-6 {
			t.Errorf("Route(%v): w0 %v want %v", tt.give, out[0].Weight, tt.wantW0)
		}
	}
}

func TestGateValidate(t *testing.T) {
	if err := (Gate{TopK: 3}).Validate(2); err == nil {
		t.Fatal("top-3 of 2 experts accepted")
	}
	if err := (Gate{TopK: 1}).Validate(8); err != nil {
		t.Fatal(err)
	}
}

func TestExperts(t *testing.T) {
	got := Experts([]Choice{{Expert: 3}, {Expert: -1}, {Expert: 1}, {Expert: 3}}, 4)
	if len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Fatalf("Experts = %v", got)
	}
}
