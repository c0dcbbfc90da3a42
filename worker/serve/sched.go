package serve

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
)

// call is one caller's sequences (an HTTP request's prompts) and the mailbox the scheduler posts
// their events to. The mailbox grows as needed, so posting never blocks the scheduler.
type call struct {
	ctx  context.Context
	seqs []*sequence

	mu    sync.Mutex
	box   []event
	ready chan struct{} // cap 1: box is not empty
}

// event is a token of one of the call's sequences, its prompt's logprobs, or its end.
type event struct {
	index  int               // the sequence's position in the call
	token  int               // when finish is "" and err is nil and !isPrompt
	lp     *positionLogprobs // the token's, with Request.Logprobs
	finish string            // "stop" | "length": the sequence ended well (its last event)
	err    error             // the sequence failed (its last event)

	isPrompt bool               // the event carries prompt: before the first token
	prompt   []positionLogprobs // with Request.PromptLogprobs: of prompt[1:]
}

func (c *call) post(ev event) {
	c.mu.Lock()
	c.box = append(c.box, ev)
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// stop ends the call's sequence index at the next step boundary, without another event: its
// caller has what it wants (a stop string matched).
func (c *call) stop(index int) {
	c.seqs[index].stopped.Store(true)
}

// next waits for events and returns them in order, reusing buf; or returns ctx's error.
func (c *call) next(buf []event) ([]event, error) {
	for {
		c.mu.Lock()
		if len(c.box) > 0 {
			evs := c.box
			c.box = buf[:0]
			c.mu.Unlock()
			return evs, nil
		}
		c.mu.Unlock()
		select {
		case <-c.ready:
		case <-c.ctx.Done():
			return nil, c.ctx.Err()
		}
	}
}

// sequence is one prompt's generation. The scheduler goroutine owns everything but call and index.
type sequence struct {
	call     *call
	index    int
	req      Request
	sampler  sampler
	seq      *engine.Sequence
	encode   engine.EncodeJob   // an encoder-decoder prompt's encoder pass while it runs in slices (encodeSlices)
	slice    int                // prompt tokens' worth of encode to run after the next Step (runSlices)
	sliced   bool               // encode has run a slice: its next ones run after a Step
	n        int                // tokens generated
	fed      int                // input tokens in the engine's cache (or encoded): below len(input) it is prefilling
	chunk    int                // prompt tokens the Step in flight feeds
	promptLP []positionLogprobs // with PromptLogprobs: of the prompt tokens fed so far (after the first)
	input    []int              // what the model is fed before the next token: the prompt (a decoder-only model's, after a preemption, with the tokens generated)
	gen      []int              // with Preemption: the tokens generated, recomputed after a preemption
	done     bool               // ended: the scheduler drops it after the Step
	kvTokens int                // the decoder cache tokens it reserves while it runs (engine.Info.CacheTokens' count)
	kvBytes  int64              // the bytes they and its prompt take (engine.Info.AdmitBytes' formula)
	deferred bool               // admitted, and passed over once by startNew: it starts at the next boundary
	queued   time.Time          // when it was submitted
	admitted time.Time          // when it left the queue
	first    time.Time          // when its first token was posted
	expires  time.Time          // with RequestTimeout: when it ends with ErrTimeout
	last     time.Time          // when its last token was posted
	stopped  atomic.Bool        // set by the caller (call.stop)
}

// end posts q's last event and frees its engine sequence.
func (q *sequence) end(finish string, err error) {
	q.release()
	q.call.post(event{index: q.index, finish: finish, err: err})
}

// release frees q's engine sequence, if it has one: its caches live on the model's backend (a
// GPU's memory, which Go's collector does not reclaim), so every way a sequence ends (end,
// stopped by its caller, preempted) frees them, once.
func (q *sequence) release() {
	if q.seq != nil {
		q.seq.Close()
		q.seq = nil
	}
}

// submit checks reqs and queues them, all or none, as one call.
func (s *Server) submit(ctx context.Context, reqs []Request) (*call, error) {
	if len(reqs) > s.cfg.MaxWaiting {
		return nil, badRequest("prompt", "%d prompts, more than the %d the server queues", len(reqs), s.cfg.MaxWaiting)
	}
	for _, req := range reqs {
		if err := s.check(req); err != nil {
			return nil, err
		}
	}
	c := &call{ctx: ctx, seqs: make([]*sequence, len(reqs)), ready: make(chan struct{}, 1)}
	now := time.Now()
	var expires time.Time
	if s.cfg.RequestTimeout > 0 {
		expires = now.Add(s.cfg.RequestTimeout)
	}
	for i, req := range reqs {
		req.Prompt = slices.Clone(req.Prompt)
		c.seqs[i] = &sequence{call: c, index: i, req: req, sampler: newSampler(req), queued: now,
			input: req.Prompt, expires: expires}
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, ErrClosed
	case len(s.waiting)+len(reqs) > s.cfg.MaxWaiting:
		s.mu.Unlock()
		return nil, ErrOverloaded
	}
	s.waiting = append(s.waiting, c.seqs...)
	s.metrics.waiting.Set(float64(len(s.waiting)))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return c, nil
}

// withdraw takes c's sequences still waiting out of the queue: its caller has stopped listening.
// Running ones go at the next step boundary, when the scheduler sees c.ctx done.
func (s *Server) withdraw(c *call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.waiting)
	s.waiting = slices.DeleteFunc(s.waiting, func(q *sequence) bool { return q.call == c })
	if len(s.waiting) != n {
		s.metrics.waiting.Set(float64(len(s.waiting)))
	}
}

// schedule is the scheduler goroutine: the only one that calls the model. A panic in the model is
// the server's failure (Err): its requests fail and the worker exits with the reason, instead of
// the process dying mid-response.
func (s *Server) schedule(context.Context) (err error) {
	var running []*sequence
	raised, rerr := compute.Raise(s.cfg.ComputePriority)
	if rerr != nil {
		s.log.Warn("the scheduler's thread keeps its priority", "err", rerr)
	}
	defer raised.Release()
	s.raised = raised // only this goroutine reads it (batchContext), after this
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("the model panicked", "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("model panicked: %v", r)
		}
		s.mu.Lock()
		s.closed = true // nobody schedules from here on: later submissions get ErrClosed
		waiting := s.waiting
		s.waiting = nil
		s.mu.Unlock()
		for _, q := range append(running, waiting...) {
			q.dropEncode()
			q.end("", ErrClosed)
		}
		s.metrics.running.Set(0)
		s.metrics.waiting.Set(0)
		s.metrics.setReserved(0, s.cfg.KVCacheBytes)
	}()
	for {
		running = s.makeRoom(s.dropCancelled(running))
		s.setRunning(running)
		admitted, ok := s.admit(s.cfg.MaxRunning-len(running), s.cfg.KVCacheBytes-reserved(running), len(running) == 0)
		if !ok {
			return nil
		}
		running = s.startNew(append(running, admitted...))
		s.setRunning(running)
		if slices.ContainsFunc(running, (*sequence).started) {
			running = s.step(running)
		}
		running = s.runSlices(running)
	}
}

// setRunning sets the gauges of the running sequences and their cache reservations.
func (s *Server) setRunning(running []*sequence) {
	s.metrics.running.Set(float64(len(running)))
	s.metrics.setReserved(reserved(running), s.cfg.KVCacheBytes)
}

// dropCancelled ends the sequences whose callers have gone or whose RequestTimeout has passed, and
// drops those their callers stopped.
func (s *Server) dropCancelled(running []*sequence) []*sequence {
	now := time.Now()
	return slices.DeleteFunc(running, func(q *sequence) bool {
		switch {
		case q.call.ctx.Err() != nil:
			q.end("", q.call.ctx.Err())
		case !q.expires.IsZero() && now.After(q.expires):
			q.end("", s.timedOut())
		case !q.stopped.Load():
			return false
		}
		q.release()
		q.dropEncode()
		return true
	})
}

// kvBlockTokens is the least a preemptible sequence's reservation grows by (vLLM's block size).
const kvBlockTokens = 16

// firstReservation is the decoder cache tokens q reserves when admitted: its worst case, prompt
// plus max_tokens; with Preemption, what it needs for its next token and a block more (it grows
// as it generates), unless it was preempted before: then its worst case, so that no sequence is
// preempted, and recomputed, twice.
func (s *Server) firstReservation(q *sequence) int {
	worst := s.info.CacheTokens(len(q.req.Prompt), q.req.MaxTokens)
	if !s.cfg.Preemption || !q.admitted.IsZero() {
		return worst
	}
	need := len(q.input) // a decoder-only model's prompt (and what it had generated)
	if !s.decoderOnly() {
		need = 1 + len(q.gen) // the decoder's start token and what it had generated
	}
	return min(worst, need+kvBlockTokens)
}

// reserve sets q's reservation to tokens of decoder cache (and its prompt's bytes).
func (s *Server) reserve(q *sequence, tokens int) {
	q.kvTokens = tokens
	q.kvBytes = int64(len(q.req.Prompt))*(s.info.PromptBytesPerToken+s.info.PassBytesPerToken) + int64(tokens)*s.info.CacheBytesPerToken
}

// makeRoom, with Preemption and KVCacheBytes, grows the reservation of each decoding sequence
// whose next token would not fit it, oldest first, by a block or an eighth of what it holds
// (whichever is more, so that the copies Reserve makes stay linear in its length). When the budget
// has no room for that, it preempts the newest running sequences until it has (vLLM's recompute
// preemption: the sequence itself, if it is the newest); a lone sequence always fits, since check
// admits none whose worst case exceeds the budget. It returns running without the preempted.
func (s *Server) makeRoom(running []*sequence) []*sequence {
	if !s.cfg.Preemption || s.cfg.KVCacheBytes == 0 {
		return running
	}
	free := s.cfg.KVCacheBytes - reserved(running)
	for i := 0; i < len(running); i++ {
		q := running[i]
		if !q.started() || q.prefilling() {
			continue // reserved whole at admission: its prompt, then a block
		}
		need := q.seq.Len() + len(q.seq.Pending)
		if need <= q.kvTokens {
			continue
		}
		old := q.kvBytes
		s.reserve(q, min(s.info.CacheTokens(len(q.req.Prompt), q.req.MaxTokens), need+max(kvBlockTokens, q.kvTokens/8)))
		for q.kvBytes-old > free && len(running) > i+1 {
			victim := running[len(running)-1]
			running = running[:len(running)-1]
			free += victim.kvBytes
			s.preempt(victim)
		}
		if q.kvBytes-old > free { // q is the newest
			running = running[:i]
			s.preempt(q)
			break
		}
		free -= q.kvBytes - old
		q.seq.Reserve(q.kvTokens)
	}
	return running
}

// preempt sends a running sequence back to the front of the queue, dropping its cache: when it is
// admitted again its prompt is prefilled again, with the tokens it had generated (a decoder-only
// model's as part of the input; an encoder-decoder model's as the decoder's first pending tokens),
// and it goes on sampling where it was, with the same sampler.
func (s *Server) preempt(q *sequence) {
	s.metrics.preemptions.Inc()
	if s.decoderOnly() && len(q.gen) > 0 {
		q.input = append(slices.Clip(q.req.Prompt), q.gen...)
	}
	q.release()
	q.dropEncode()
	q.fed, q.chunk, q.promptLP, q.deferred = 0, 0, nil, false
	s.reserve(q, 0)
	s.mu.Lock()
	s.waiting = slices.Insert(s.waiting, 0, q)
	s.metrics.waiting.Set(float64(len(s.waiting)))
	s.mu.Unlock()
}

// timedOut is the error of a sequence past RequestTimeout.
func (s *Server) timedOut() error {
	return fmt.Errorf("%w: the request ran longer than the worker's request timeout of %v", ErrTimeout, s.cfg.RequestTimeout)
}

// reserved is the cache bytes the running sequences reserve.
func reserved(running []*sequence) int64 {
	var n int64
	for _, q := range running {
		n += q.kvBytes
	}
	return n
}

// admit takes up to n waiting sequences, oldest first (preempted ones are at the front), whose
// cache reservations fit in free bytes (with KVCacheBytes), skipping cancelled ones and ending
// those past RequestTimeout and those that waited past QueueTimeout (a preempted one is not held to
// it: it waits for room its elders will free). It stops at the first that does not fit, so a long
// request is not passed over for ever by short ones. With block it waits for at least one. It
// returns false once the server is closed.
func (s *Server) admit(n int, free int64, block bool) ([]*sequence, bool) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, false
		}
		var admitted []*sequence
		now := time.Now()
		kept := s.waiting[:0]
		full := false
		for _, q := range s.waiting {
			switch {
			case q.call.ctx.Err() != nil:
				q.end("", q.call.ctx.Err())
				continue
			case !q.expires.IsZero() && now.After(q.expires):
				q.end("", s.timedOut())
				continue
			}
			s.reserve(q, s.firstReservation(q))
			if full || len(admitted) == n || s.cfg.KVCacheBytes > 0 && q.kvBytes > free {
				full = true
				if s.cfg.QueueTimeout > 0 && now.Sub(q.queued) > s.cfg.QueueTimeout && q.admitted.IsZero() {
					q.end("", fmt.Errorf("%w: waited %v to be admitted", ErrOverloaded, s.cfg.QueueTimeout))
					continue
				}
				kept = append(kept, q)
				continue
			}
			free -= q.kvBytes
			if q.admitted.IsZero() { // not a preempted sequence's return
				q.admitted = now
				s.metrics.queueTime.Observe(now.Sub(q.queued).Seconds())
			}
			admitted = append(admitted, q)
		}
		if len(kept) != len(s.waiting) {
			clear(s.waiting[len(kept):])
			s.waiting = kept
			s.metrics.waiting.Set(float64(len(s.waiting)))
		}
		s.mu.Unlock()
		if len(admitted) > 0 || !block {
			return admitted, true
		}
		select {
		case <-s.wake:
		case <-s.ctx.Done():
		}
	}
}

// started reports whether q has its engine sequence: admitted sequences start at the next step
// boundary, or a later one (startNew).
func (q *sequence) started() bool { return q.seq != nil }

// dropEncode frees q's encoder pass in progress, if any.
func (q *sequence) dropEncode() {
	if q.encode != nil {
		q.encode.Close()
		q.encode, q.slice, q.sliced = nil, 0, false
	}
}

// startNew starts admitted sequences that have not started (running holds them from admission,
// with their cache reservations) and returns running without those that failed to. A decoder-only
// model's Start only copies the prompts (plan feeds them in chunks): they all start. An
// encoder-decoder model whose encoder runs in slices (engine.Encoder) runs them within
// MaxBatchedTokens (encodeSlices). Another encoder-decoder model's Start runs the encoder over
// whole prompts, which no step can interrupt, so with MaxBatchedTokens it starts the fewest prompt
// tokens first while they fit beside the decoding sequences' tokens, and at least one: a short
// prompt admitted beside a long one is encoded, and gets its first token, before the long one's
// encoder pass, and the running sequences decode a step between two long prompts' passes. A
// prompt passed over once starts at the next step boundary whatever its length, so a stream of
// short prompts cannot hold a long one back.
func (s *Server) startNew(running []*sequence) []*sequence {
	var fresh []*sequence
	decoding := 0
	for _, q := range running {
		if q.started() {
			decoding++
		} else {
			fresh = append(fresh, q)
		}
	}
	if len(fresh) == 0 {
		return running
	}
	if enc, ok := s.cfg.Model.(engine.Encoder); ok && !s.decoderOnly() && s.cfg.MaxBatchedTokens > 0 {
		return s.encodeSlices(enc, running, fresh, s.cfg.MaxBatchedTokens-decoding)
	}
	if !s.decoderOnly() && s.cfg.MaxBatchedTokens > 0 {
		slices.SortStableFunc(fresh, func(a, b *sequence) int { return len(a.input) - len(b.input) })
		budget := s.cfg.MaxBatchedTokens - decoding
		now := fresh[:0:0]
		for _, q := range fresh {
			if n := len(q.input); q.deferred || len(now) == 0 || n <= budget {
				budget -= n
				now = append(now, q)
			} else {
				q.deferred = true
			}
		}
		fresh = now
	}
	if !s.start(fresh) {
		for _, q := range fresh {
			q.done = true
		}
		return s.dropDone(running)
	}
	return running
}

// encodeSlices shares budget prompt tokens' worth of encoder work (MaxBatchedTokens less the
// decoding sequences' tokens, which go first, as plan does for a decoder-only model's prompt
// chunks) among the encoder passes of the sequences in fresh (admitted, not started): each pass is
// an engine.EncodeJob that runs in slices of rows, layer by layer, and the fewest tokens left go
// first. A pass that runs whole within its share runs now and starts its sequence, which decodes
// in this boundary's Step; the others' shares, the last slice of a long pass too, run after the
// Step (runSlices). So a short prompt is encoded whole and gets its first token at the next step
// boundary even while a long one's pass runs, and the decoding sequences get a token between two
// slices of a long pass, at most the budget apart. A pass that got nothing
// at a boundary goes first at the next, so short prompts cannot hold a long one back. It returns
// running without the sequences whose pass failed.
func (s *Server) encodeSlices(enc engine.Encoder, running, fresh []*sequence, budget int) []*sequence {
	for _, q := range fresh {
		if q.encode != nil {
			continue
		}
		job, err := enc.BeginEncode([][]int{q.input})
		if err != nil {
			s.fail([]*sequence{q}, "start", err)
			q.done = true
			continue
		}
		q.encode = job
	}
	fresh = slices.DeleteFunc(fresh, func(q *sequence) bool { return q.done })
	slices.SortStableFunc(fresh, func(a, b *sequence) int {
		if a.deferred != b.deferred {
			if a.deferred {
				return -1
			}
			return 1
		}
		return a.encode.Left() - b.encode.Left()
	})
	for _, q := range fresh {
		if budget <= 0 {
			q.deferred = true
			continue
		}
		n := min(budget, q.encode.Left())
		budget -= n
		q.deferred = false
		if n < q.encode.Left() || q.sliced {
			q.slice = n // after the Step: one slice of a pass between two Steps
			continue
		}
		s.runSlice(q, n)
	}
	return s.dropDone(running)
}

// runSlices runs the encoder slices encodeSlices put after the Step, and returns running without
// the sequences whose pass failed.
func (s *Server) runSlices(running []*sequence) []*sequence {
	ran := false
	for _, q := range running {
		if q.encode != nil && q.slice > 0 {
			s.runSlice(q, q.slice)
			ran = true
		}
	}
	if !ran {
		return running
	}
	return s.dropDone(running)
}

// runSlice runs tokens' worth of q's encoder pass; a pass that ends starts q, one that fails ends it.
func (s *Server) runSlice(q *sequence, tokens int) {
	q.slice, q.sliced = 0, true
	ctx, release := s.batchContext([]*sequence{q})
	done, err := q.encode.Run(ctx, tokens)
	release()
	switch {
	case err != nil:
		s.fail([]*sequence{q}, "start", err)
		q.dropEncode()
		q.done = true
	case done:
		seq := q.encode.Sequences()[0]
		q.dropEncode()
		s.begin(q, seq)
	}
}

// start makes the sequences' engine sequences in one Start; on an error they all fail, and it
// returns false.
func (s *Server) start(admitted []*sequence) bool {
	prompts := make([][]int, len(admitted))
	for i, q := range admitted {
		prompts[i] = q.input
	}
	ctx, release := s.batchContext(admitted)
	seqs, err := s.cfg.Model.Start(ctx, prompts)
	release()
	if err != nil {
		s.fail(admitted, "start", err)
		return false
	}
	for i, q := range admitted {
		s.begin(q, seqs[i])
	}
	return true
}

// begin gives q its engine sequence, made by Start or by an encoder pass.
func (s *Server) begin(q *sequence, seq *engine.Sequence) {
	q.seq = seq
	s.metrics.promptTokens.Add(float64(len(q.req.Prompt)))
	if s.cfg.KVCacheBytes > 0 {
		// Allocate the cache admission reserved, at once: append's growth would overshoot it.
		q.seq.Reserve(q.kvTokens)
	}
	if s.decoderOnly() {
		// The prompt goes to the model chunk by chunk (plan); Start's copy is not fed as a whole.
		q.seq.Pending = q.seq.Pending[:0]
	} else {
		// Start encoded it: the decoder is one pending token, and after a preemption the
		// tokens it had generated.
		q.fed = len(q.input)
		q.seq.Pending = append(q.seq.Pending, q.gen...)
	}
}

// prefilling reports whether part of q's prompt has not been through the model yet.
func (q *sequence) prefilling() bool { return q.fed < len(q.input) }

// wantsPromptLogprobs reports whether q's prompt logprobs are still to come: its first prefill.
func (q *sequence) wantsPromptLogprobs() bool { return q.req.PromptLogprobs && q.n == 0 }

// plan picks the sequences the next Step runs, within MaxBatchedTokens: every decoding sequence
// (one token each) first, so that a long prompt never holds up the tokens of others, then prompt
// chunks of the prefilling ones while the budget lasts, the fewest tokens left first (oldest first
// among equals), so that a short prompt sent beside a long one starts at once instead of after it.
// It sets each chosen prefilling sequence's Pending to its chunk. Validate keeps the budget ≥
// MaxRunning, so a prefilling sequence always gets at least one token and every Step makes
// progress; a long prompt waits only while other prompts fill the whole budget, and at most
// MaxRunning-1 others are running. While a prefilling sequence wants its prompt's logprobs, the
// budget is at most promptLogprobsTokens (or MaxRunning, if more), with MaxBatchedTokens 0 too.
func (s *Server) plan(running []*sequence) []*sequence {
	batch := make([]*sequence, 0, len(running))
	var prefilling []*sequence
	budget := s.cfg.MaxBatchedTokens
	if slices.ContainsFunc(running, func(q *sequence) bool { return q.started() && q.prefilling() && q.wantsPromptLogprobs() }) {
		if limit := max(s.logitsTokens, s.cfg.MaxRunning); budget == 0 || budget > limit {
			budget = limit // the Step returns every position's logits
		}
	}
	bounded := budget > 0
	for _, q := range running {
		if !q.started() {
			continue // an encoder-decoder prompt that starts at a later step boundary (startNew)
		}
		if q.prefilling() {
			prefilling = append(prefilling, q)
			continue
		}
		q.chunk = 0
		batch = append(batch, q)
		budget--
	}
	slices.SortStableFunc(prefilling, func(a, b *sequence) int {
		return (len(a.input) - a.fed) - (len(b.input) - b.fed)
	})
	for _, q := range prefilling {
		n := len(q.input) - q.fed
		if bounded {
			if budget <= 0 {
				break
			}
			n = min(n, budget)
			budget -= n
		}
		q.chunk = n
		q.seq.Pending = append(q.seq.Pending[:0], q.input[q.fed:q.fed+n]...)
		batch = append(batch, q)
	}
	return batch
}

// promptLogprobsTokens bounds the tokens of a Step that returns every position's logits (a prompt
// chunk of a sequence that wants its prompt's logprobs), below MaxBatchedTokens: such a Step
// returns tokens × vocab float32 (64 MiB at 512 tokens and a 32k vocabulary), whatever the prompt's
// length, and its rows become k+1 logprobs per position at once (appendPromptLogprobs).
const promptLogprobsTokens = 512

// step runs one Step of the sequences plan picks, samples and posts a token for each whose prompt
// is all in, and returns the running sequences still generating (those the Step did not include
// wait for the next).
func (s *Server) step(running []*sequence) []*sequence {
	batch := s.plan(running)
	seqs := make([]*engine.Sequence, len(batch))
	for i, q := range batch {
		seqs[i] = q.seq
	}
	// A sequence that wants its prompt's logprobs needs the logits of every prompt position, so
	// the Steps that feed its prompt return them for the whole batch.
	all := slices.ContainsFunc(batch, func(q *sequence) bool { return q.chunk > 0 && q.wantsPromptLogprobs() })
	ctx, release := s.batchContext(batch)
	logits, err := s.cfg.Model.Step(ctx, seqs, all)
	release()
	var partial *engine.SequenceErrors
	if err != nil && (!errors.As(err, &partial) || logits == nil) {
		// Only the Step's sequences fail: the others' caches are as they were.
		s.fail(batch, "step", err)
		for _, q := range batch {
			q.done = true
		}
		return s.dropDone(running)
	}
	now := time.Now()
	for i, q := range batch {
		if partial != nil && partial.Failed[i] != nil {
			s.fail([]*sequence{q}, "step", partial.Failed[i]) // an expert it needed is unavailable
			q.done = true
			continue
		}
		if s.emit(q, logits[i], all, now) {
			q.done = true
		}
	}
	return s.dropDone(running)
}

// emit takes q's logits row from a Step: the end of a prompt chunk (kept for prompt logprobs) or
// the distribution of its next token, which it samples and posts. It reports whether q ended.
func (s *Server) emit(q *sequence, row []float32, all bool, now time.Time) bool {
	vocab := s.info.VocabSize
	if q.chunk > 0 {
		if q.wantsPromptLogprobs() {
			q.promptLP = appendPromptLogprobs(q.promptLP, row, q.req.Prompt, q.fed, vocab, q.req.TopLogprobs)
		}
		q.fed += q.chunk
		if q.prefilling() {
			return false // the next chunk's Step goes on from here; this row predicts nothing asked
		}
		if q.wantsPromptLogprobs() {
			q.call.post(event{index: q.index, isPrompt: true, prompt: q.promptLP})
			q.promptLP = nil
		}
	}
	if all {
		row = row[len(row)-vocab:]
	}
	tok := q.sampler.next(row, &s.scratch)
	if s.cfg.Preemption {
		q.gen = append(q.gen, tok)
	}
	ev := event{index: q.index, token: tok}
	if q.req.Logprobs {
		lp := logprobsOf(row, tok, q.req.TopLogprobs)
		ev.lp = &lp
	}
	q.n++
	if q.n == 1 {
		q.first = now
		s.metrics.ttft.Observe(now.Sub(q.queued).Seconds())
		s.metrics.prefillTime.Observe(now.Sub(q.admitted).Seconds())
	} else {
		s.metrics.itl.Observe(now.Sub(q.last).Seconds())
	}
	q.last = now
	s.metrics.generationTokens.Inc()
	q.call.post(ev)
	finish := ""
	switch {
	case !q.req.IgnoreEOS && slices.Contains(s.info.EOS, tok), slices.Contains(q.req.StopTokenIDs, tok):
		finish = "stop"
	case q.n >= q.req.MaxTokens:
		finish = "length"
	}
	if finish != "" {
		s.metrics.finished(q, finish, now)
		q.end(finish, nil)
		return true
	}
	q.seq.Pending = append(q.seq.Pending[:0], tok)
	return false
}

// dropDone removes the ended sequences from running.
func (s *Server) dropDone(running []*sequence) []*sequence {
	return slices.DeleteFunc(running, func(q *sequence) bool {
		if q.done {
			q.dropEncode()
		}
		return q.done
	})
}

// fail ends every sequence of a batch whose Start or Step failed: with its caller's error if it
// went, ErrClosed if the server is closing, else the engine's error (logged here, once).
func (s *Server) fail(batch []*sequence, op string, err error) {
	logged := false
	for _, q := range batch {
		qerr := err
		switch {
		case q.call.ctx.Err() != nil:
			qerr = q.call.ctx.Err()
		case s.ctx.Err() != nil:
			qerr = ErrClosed
		case !logged:
			s.log.Error(op+" failed", "sequences", len(batch), "err", err)
			logged = true
		}
		q.end("", qerr)
	}
}

// batchContext returns the context for a Start or Step of batch: cancelled when the server closes
// and when every sequence's caller has gone, so that fetches nobody waits for stop. release stops
// watching the callers.
func (s *Server) batchContext(batch []*sequence) (ctx context.Context, release func()) {
	// The model's waits let go of the raised thread while they block (compute.PauseRaised).
	ctx, cancel := context.WithCancel(compute.WithRaised(s.ctx, s.raised))
	var live atomic.Int64
	live.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, q := range batch {
		stops[i] = context.AfterFunc(q.call.ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
