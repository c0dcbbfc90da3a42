package serve

import (
	"math"
	"slices"
)

// tokenLogprob is one token's log-probability at a position.
type tokenLogprob struct {
	id      int
	logprob float32
}

// positionLogprobs is what a position's logits say about the token there: its log-probability
// and the k most likely tokens', most likely first.
type positionLogprobs struct {
	logprob float32
	top     []tokenLogprob
}

// logprobsOf returns the log-softmax of logits at token tok and the k most likely tokens (ties: the
// lower id first). They are of the model's distribution: before temperature, top_p and penalties,
// as vLLM reports them by default.
func logprobsOf(logits []float32, tok, k int) positionLogprobs {
	lse := logSumExp(logits)
	lp := positionLogprobs{logprob: float32(float64(logits[tok]) - lse)}
	for _, id := range topK(logits, k) {
		lp.top = append(lp.top, tokenLogprob{id: id, logprob: float32(float64(logits[id]) - lse)})
	}
	return lp
}

func logSumExp(x []float32) float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = max(m, float64(v))
	}
	sum := 0.0
	for _, v := range x {
		sum += math.Exp(float64(v) - m)
	}
	return m + math.Log(sum)
}

// topK returns the ids of the k largest logits, largest first: one pass keeping a sorted list of
// at most k (k ≤ 20, so insertion beats a heap).
func topK(logits []float32, k int) []int {
	if k <= 0 {
		return nil
	}
	less := func(a, b int) bool { // a ranks below b
		return logits[a] < logits[b] || logits[a] == logits[b] && a > b
	}
	ids := make([]int, 0, k+1)
	for i := range logits {
		if len(ids) == k && !less(ids[k-1], i) {
			continue
		}
		at, _ := slices.BinarySearchFunc(ids, i, func(have, want int) int {
			if less(want, have) {
				return -1
			}
			return 1
		})
		ids = slices.Insert(ids, at, i)
		if len(ids) > k {
			ids = ids[:k]
		}
	}
	return ids
}

// appendPromptLogprobs appends to dst, for each row of rows (a Step's logits of prompt positions
// from, from+1, …; rows × vocab, as Step returns them with all), the log-probability of the prompt
// token that follows the row's position given what precedes it. Fed chunk by chunk, it turns each
// chunk's logits into k+1 numbers per position at once: a prompt's logits are never held whole.
func appendPromptLogprobs(dst []positionLogprobs, rows []float32, prompt []int, from, vocab, k int) []positionLogprobs {
	for j := 0; (j+1)*vocab <= len(rows) && from+j+1 < len(prompt); j++ {
		dst = append(dst, logprobsOf(rows[j*vocab:(j+1)*vocab], prompt[from+j+1], k))
	}
	return dst
}
