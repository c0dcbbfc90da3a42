package routing

import (
	"fmt"
	"math"
)

// Choice is one (token, expert) assignment. Expert is -1 when the token was dropped by the capacity
// limit; its Weight then does not matter (the expert output is zero, as in current HuggingFace code).
type Choice struct {
	Expert int
	Weight float32
}

// Gate describes how logits become choices.
type Gate struct {
	// TopK experts per token (Switch: 1, Mixtral: 2).
	TopK int
	// Renormalize divides the top-k probabilities by their sum (Mixtral); without it a choice's
	// weight is its softmax probability over all experts (Switch).
	Renormalize bool
	// Capacity is the most tokens one expert may take within one sequence of one forward pass, 0 for
	// no limit. Tokens past it are dropped in sequence order (HF: cumsum of the one-hot choices).
	Capacity int
}

// Validate reports a gate that cannot route numExperts experts.
func (g Gate) Validate(numExperts int) error {
	if numExperts <= 0 {
		return fmt.Errorf("routing: %d experts", numExperts)
	}
	if g.TopK <= 0 || g.TopK > numExperts {
		return fmt.Errorf("routing: top-k %d with %d experts", g.TopK, numExperts)
	}
	if g.Capacity < 0 {
		return fmt.Errorf("routing: negative expert capacity %d", g.Capacity)
	}
	return nil
}

// Route turns logits [tokens × numExperts] into choices [tokens × TopK], ordered per token by
// decreasing probability (torch.topk order; ties go to the lower expert index). probs is scratch of
// at least numExperts floats (nil allocates). seqLens splits the tokens into sequences for the
// capacity limit (nil: one sequence).
func (g Gate) Route(logits []float32, numExperts int, seqLens []int, out []Choice, probs []float32) {
	tokens := len(logits) / numExperts
	if len(probs) < numExperts {
		probs = make([]float32, numExperts)
	}
	probs = probs[:numExperts]
	for t := range tokens {
		copy(probs, logits[t*numExperts:(t+1)*numExperts])
		Softmax(probs)
		TopK(probs, out[t*g.TopK:(t+1)*g.TopK])
		if g.Renormalize {
			var sum float32
			for _, c := range out[t*g.TopK : (t+1)*g.TopK] {
				sum += c.Weight
			}
			for i := range out[t*g.TopK : (t+1)*g.TopK] {
				out[t*g.TopK+i].Weight /= sum
			}
		}
	}
	if g.Capacity > 0 {
		ApplyCapacity(out[:tokens*g.TopK], g.TopK, numExperts, seqLens, g.Capacity)
	}
}

// Softmax normalises x in place, computing in float32 after subtracting the maximum, as
// torch.softmax(dtype=float32) does.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - m)))
		x[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}

// TopK writes the len(out) largest entries of probs into out, largest first; equal values keep
// index order.
func TopK(probs []float32, out []Choice) {
	k := len(out)
	for i := range out {
		out[i] = Choice{Expert: -1, Weight: float32(math.Inf(-1))}
	}
	for e, p := range probs {
		// Insertion into a sorted list of k; strict > keeps the lower index first on ties.
		if p <= out[k-1].Weight && out[k-1].Expert >= 0 {
			continue
		}
		j := k - 1
		for j > 0 && (out[j-1].Expert < 0 || p > out[j-1].Weight) {
			out[j] = out[j-1]
			j--
		}
		out[j] = Choice{Expert: e, Weight: p}
	}
}

// ApplyCapacity drops (Expert = -1) every choice whose running count for its expert, counted in
// token order within its sequence, exceeds capacity. choices holds topK entries per token; seqLens
// gives the tokens of each sequence (nil: all one sequence). HF counts top-1 choices only; for
// top-k each rank is counted in token order, rank by rank within a token.
func ApplyCapacity(choices []Choice, topK, numExperts int, seqLens []int, capacity int) {
	tokens := len(choices) / topK
	if seqLens == nil {
		seqLens = []int{tokens}
	}
	counts := make([]int, numExperts)
	start := 0
	for _, n := range seqLens {
		clear(counts)
		end := min(start+n, tokens)
		if start < end {
			CountCapacity(choices[start*topK:end*topK], counts, capacity)
		}
		start += n
	}
}

// CountCapacity is ApplyCapacity for consecutive tokens of one sequence (their topK choices each,
// in order), continuing from counts (the sequence's choices per expert so far, updated): a
// sequence routed in parts keeps its counts between them.
func CountCapacity(choices []Choice, counts []int, capacity int) {
	for i := range choices {
		c := &choices[i]
		if c.Expert < 0 {
			continue
		}
		counts[c.Expert]++
		if counts[c.Expert] > capacity {
			c.Expert = -1
		}
	}
}

// Experts returns the distinct experts chosen, in increasing order.
func Experts(choices []Choice, numExperts int) []int {
	seen := make([]bool, numExperts)
	for _, c := range choices {
		if c.Expert >= 0 {
			seen[c.Expert] = true
		}
	}
	var out []int
	for e, s := range seen {
		if s {
			out = append(out, e)
		}
	}
	return out
}
