package serve

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/pregate/pregate/compute"
)

// sampler picks each next token of one sequence: greedily at temperature 0 (as engine.Generate
// does), else from softmax(logits/temperature) cut to the top_p nucleus, with its own PCG seeded
// from the request so that a seed reproduces a completion.
type sampler struct {
	temperature, topP float64
	rng               *rand.Rand // nil: greedy
}

// scratch is the samplers' working memory, owned by the scheduler goroutine.
type scratch struct {
	probs []float64 // [vocab]
	order []int     // token ids, most likely first
}

func newSampler(req Request) sampler {
	if req.Temperature == 0 {
		return sampler{}
	}
	seed := rand.Uint64()
	if req.Seed != nil {
		seed = uint64(*req.Seed)
	}
	topP := req.TopP
	if topP == 0 {
		topP = 1
	}
	return sampler{temperature: req.Temperature, topP: topP, rng: rand.New(rand.NewPCG(seed, seed))}
}

func (s *sampler) sample(logits []float32, sc *scratch) int {
	best := compute.ArgMax(logits)
	if s.rng == nil {
		return best
	}
	top := float64(logits[best])
	if cap(sc.probs) < len(logits) {
		sc.probs = make([]float64, len(logits))
	}
	p := sc.probs[:len(logits)] // relative to the most likely token's, which is 1
	sum := 0.0
	for i, l := range logits {
		p[i] = math.Exp((float64(l) - top) / s.temperature)
		sum += p[i]
	}
	if !(sum >= 1) || math.IsInf(sum, 0) { // NaN logits: nothing sensible to sample from
		return best
	}
	if s.topP >= 1 {
		u := s.rng.Float64() * sum
		for i, v := range p {
			if u -= v; u < 0 {
				return i
			}
		}
		return best // rounding
	}
	// The nucleus is the shortest prefix of the most likely tokens whose mass reaches top_p. To sort
	// few tokens, take those above a threshold, lowered until their mass reaches top_p: the
	// nucleus is among them.
	want := s.topP * sum
	var order []int
	for thr := 1e-3; ; thr *= 1e-3 {
		order = sc.order[:0]
		mass := 0.0
		for i, v := range p {
			if v >= thr {
				order = append(order, i)
				mass += v
			}
		}
		if mass >= want || thr == 0 {
			break
		}
	}
	sc.order = order
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(p[b], p[a]), cmp.Compare(a, b))
	})
	mass, k := 0.0, 0
	for k < len(order) {
		mass += p[order[k]]
		k++
		if mass >= want {
			break
		}
	}
	u := s.rng.Float64() * mass
	for _, i := range order[:k] {
		if u -= p[i]; u < 0 {
			return i
		}
	}
	return order[k-1]
}
