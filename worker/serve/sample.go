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
// from the request so that a seed reproduces a completion. Presence and frequency penalties,
// when set, lower the logits of the tokens it has already generated before either rule picks.
type sampler struct {
	temperature, topP   float64
	presence, frequency float64
	counts              map[int]int // generated token → times; nil without penalties
	rng                 *rand.Rand  // nil: greedy
}

// scratch is the samplers' working memory, owned by the scheduler goroutine.
type scratch struct {
	probs     []float64 // [vocab]
	order     []int     // token ids, most likely first
	penalized []float32 // [vocab]: a penalized copy of a sequence's logits
}

func newSampler(req Request) sampler {
	s := sampler{presence: req.PresencePenalty, frequency: req.FrequencyPenalty}
	if s.presence != 0 || s.frequency != 0 {
		s.counts = map[int]int{}
	}
	if req.Temperature == 0 {
		return s
	}
	seed := rand.Uint64()
	if req.Seed != nil {
		seed = uint64(*req.Seed)
	}
	s.temperature, s.topP = req.Temperature, req.TopP
	if s.topP == 0 {
		s.topP = 1
	}
	s.rng = rand.New(rand.NewPCG(seed, seed))
	return s
}

// next picks the next token from logits, which it leaves as they are (logprobs are of the
// model's own distribution), and counts it for the penalties.
func (s *sampler) next(logits []float32, sc *scratch) int {
	tok := s.sample(s.penalize(logits, sc), sc)
	if s.counts != nil {
		s.counts[tok]++
	}
	return tok
}

// penalize returns logits with OpenAI's penalties applied, in a copy:
// logit[t] − frequency·count(t) − presence·[count(t) > 0], over the tokens generated so far.
func (s *sampler) penalize(logits []float32, sc *scratch) []float32 {
	if len(s.counts) == 0 {
		return logits
	}
	sc.penalized = append(sc.penalized[:0], logits...)
	for t, c := range s.counts {
		if t < len(logits) {
			sc.penalized[t] -= float32(s.frequency*float64(c) + s.presence)
		}
	}
	return sc.penalized
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
