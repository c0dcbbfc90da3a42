// Package engine runs HuggingFace MoE checkpoints (Switch Transformers, Mixtral) on a compute
// backend (compute.Backend: the CPU device, or a GPU): the model engine that workers serve.
//
// Data flow for one decoding step: Generate asks a Model to Step a batch of Sequences; the model
// embeds each sequence's pending tokens (sequences of different lengths are packed into one
// activation matrix, no padding), runs its dense layers through its compute.Backend (weights,
// activations and KV caches live there), and at every MoE block computes router logits, downloads
// them and turns them into expert choices on the host (routing), tells its Experts which experts
// it will need (Hint, as early as it knows: a pre-gated checkpoint knows the next block's experts one
// block ahead) and then Acquires each expert's weights, computes, and Releases them. Experts is the
// one seam between the model code and where expert weights live: LocalExperts reads them from the
// checkpoint; the worker puts its cache and fetch pipeline behind the same interface.
//
// Numerics follow HuggingFace transformers exactly (float32 activations and accumulation; BF16
// weights are widened on the fly), which the tests check against golden outputs computed by HF.
package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// Errors returned by the engine.
var (
	ErrUnsupported = errors.New("engine: unsupported checkpoint")
	ErrBadInput    = errors.New("engine: bad input")
	// ErrExpertUnavailable wraps an Experts implementation's failure to provide an expert's
	// weights after its own retries (every store replica failed): the Step that needed it fails,
	// and a server answers its requests "try again later" rather than "the server is broken".
	ErrExpertUnavailable = errors.New("engine: expert unavailable")
)

// Model is a loaded checkpoint that can decode.
type Model interface {
	// Info describes the model.
	Info() Info
	// Start makes one Sequence per prompt. For an encoder-decoder model the prompt is the encoder
	// input (encoded here) and the decoder starts from its start token; for a decoder-only model the
	// prompt is the first pending input.
	Start(ctx context.Context, prompts [][]int) ([]*Sequence, error)
	// Step runs every sequence's Pending tokens through the model, appends them to its cache, clears
	// Pending and returns per sequence the logits of its last pending token ([vocab]) or, with all,
	// of every pending token ([pending × vocab]). When an unavailable expert failed only some of
	// the sequences, it returns the logits with a *SequenceErrors naming those (their rows and
	// caches are garbage; the others' are valid).
	Step(ctx context.Context, seqs []*Sequence, all bool) ([][]float32, error)
	// Close releases the model's resources (the checkpoint mapping stays owned by the caller).
	Close() error
}

// Info describes a loaded model.
type Info struct {
	Arch      string // "switch_transformers" | "mixtral"
	VocabSize int
	EOS       []int
	// MoEBlocks lists the MoE blocks in forward order; Experts calls name them by index.
	MoEBlocks []MoEBlock
	// PreGated is true when the checkpoint carries pre-gate matrices: every MoE block after the
	// first of its stack is routed by the previous one's pre-gate.
	PreGated bool
	// DenseBytes and ExpertBytes are the sizes of the weights, in the checkpoint's dtype.
	DenseBytes, ExpertBytes int64
	// CacheBytesPerToken is what each token a decoder has run adds to its sequence's cache: the
	// self-attention keys and values of every decoder layer (float32).
	CacheBytesPerToken int64
	// PromptBytesPerToken is what each prompt token of an encoder-decoder model keeps for the
	// sequence's life besides: its encoder output and every decoder layer's cross-attention keys
	// and values. 0 for decoder-only models, whose prompt is in the decoder's cache.
	PromptBytesPerToken int64
	// PassBytesPerToken is what each prompt token of an encoder-decoder model holds besides while
	// its encoder pass runs, whole or in slices between steps: the pass's residual stream and one
	// layer's keys and values (float32). 0 for decoder-only models.
	PassBytesPerToken int64
}

// CacheTokens is the most tokens a sequence of prompt tokens that generates up to maxTokens runs
// through its decoder (what Sequence.Reserve wants). The last token generated is never run.
func (i Info) CacheTokens(prompt, maxTokens int) int {
	if i.PromptBytesPerToken == 0 {
		return prompt + maxTokens - 1 // decoder-only: the prompt is in the decoder's cache
	}
	return maxTokens // the decoder start token and every generated token but the last
}

// AdmitBytes is what a server reserves for a sequence of prompt tokens that generates up to
// maxTokens: its caches at their longest (SequenceBytes) and what its encoder pass holds while it
// runs, so that no pass can take the server past its budget.
func (i Info) AdmitBytes(prompt, maxTokens int) int64 {
	return i.SequenceBytes(prompt, maxTokens) + int64(prompt)*i.PassBytesPerToken
}

// SequenceBytes is the most a sequence of prompt tokens that generates up to maxTokens keeps in
// memory (its caches at their longest): what a server reserves before it admits the sequence.
func (i Info) SequenceBytes(prompt, maxTokens int) int64 {
	return int64(prompt)*i.PromptBytesPerToken + int64(i.CacheTokens(prompt, maxTokens))*i.CacheBytesPerToken
}

// MoEBlock names one MoE block.
type MoEBlock struct {
	Name       string // e.g. "encoder.block.1", "model.layers.3"
	NumExperts int
	TopK       int
	// PreGateFor is the index of the MoE block this block's pre-gate routes, or -1.
	PreGateFor int
}

// Sequence is one sequence being decoded: its cache and its next input tokens. Its caches live
// on the model's backend; Close returns them (a GPU's memory is not collected by Go's GC).
type Sequence struct {
	// Pending tokens are fed by the next Step.
	Pending []int
	n       int             // tokens already in the cache
	width   int             // floats per token of each layer's keys (and of its values)
	be      compute.Backend // where the caches live
	kv      []kvCache       // per decoder layer
	enc     *encoderOut     // encoder-decoder models only
	err     error           // a failed Reserve: the next Step fails with it
}

// Len is the number of tokens in the sequence's cache.
func (s *Sequence) Len() int { return s.n }

// Reserve sizes the sequence's cache for tokens in all (its pending and future ones, counted as
// Len counts them), so that Steps up to that length append without reallocating: a server that
// admits by memory allocates each sequence's cache once, at the worst case it reserved, instead
// of letting append's growth overshoot it. When the backend cannot allocate, the sequence's next
// Step fails with the error.
func (s *Sequence) Reserve(tokens int) {
	for i := range s.kv {
		if err := s.kv[i].reserve(s.be, tokens*s.width); err != nil && s.err == nil {
			s.err = err
		}
	}
}

// Close frees the sequence's caches on the backend. It is idempotent; a closed sequence must not
// be stepped again.
func (s *Sequence) Close() {
	if s.be == nil {
		return
	}
	for i := range s.kv {
		s.kv[i].free(s.be)
	}
	if s.enc != nil {
		s.enc.free(s.be)
	}
	s.kv, s.enc, s.be = nil, nil, nil
}

// kvCache is one layer's keys and values of a sequence: k and v hold capacity for cap/width tokens,
// of which the first used elements are filled.
type kvCache struct {
	k, v compute.Tensor
	used int // elements of k (and of v) filled
}

// reserve grows the cache to hold n elements each of keys and values, when it holds less.
func (c *kvCache) reserve(be compute.Backend, n int) error {
	if c.k.Len() >= n {
		return nil
	}
	k, err := be.Alloc(compute.F32, n)
	if err != nil {
		return err
	}
	v, err := be.Alloc(compute.F32, n)
	if err != nil {
		be.Free(k)
		return err
	}
	if c.used > 0 {
		be.Copy(k.View(0, c.used), c.k.View(0, c.used))
		be.Copy(v.View(0, c.used), c.v.View(0, c.used))
	}
	c.free(be)
	c.k, c.v = k, v
	return nil
}

// append adds keys and values k, v (equal lengths) after the used elements, growing the cache
// as append grows a slice (doubling) when it is full.
func (c *kvCache) append(be compute.Backend, k, v compute.Tensor) error {
	need := c.used + k.Len()
	if need > c.k.Len() {
		if err := c.reserve(be, max(need, 2*c.k.Len())); err != nil {
			return err
		}
	}
	be.Copy(c.k.View(c.used, k.Len()), k)
	be.Copy(c.v.View(c.used, v.Len()), v)
	c.used = need
	return nil
}

func (c *kvCache) free(be compute.Backend) {
	be.Free(c.k)
	be.Free(c.v)
	c.k, c.v = compute.Tensor{}, compute.Tensor{}
}

// scratch allocates a step's activations on a backend and frees them when the function that
// allocated them returns: a model keeps one (the engine is single-threaded per model), and each
// function marks it on entry and releases what it allocated since on return, so that its list of
// held tensors is reused from step to step instead of reallocated. An allocation failure is
// remembered (err) and yields the zero Tensor: check err after a group of allocations.
type scratch struct {
	be   compute.Backend
	held []compute.Tensor
	err  error
}

// f32 returns a zeroed float32 tensor of n elements.
func (s *scratch) f32(n int) compute.Tensor {
	t, err := s.be.Alloc(compute.F32, n)
	if err != nil {
		if s.err == nil {
			s.err = err
		}
		return compute.Tensor{}
	}
	s.held = append(s.held, t)
	return t
}

// mark returns the position that release frees back to.
func (s *scratch) mark() int { return len(s.held) }

// release frees the tensors allocated since mark, and forgets an allocation failure (its caller
// has returned the error by then).
func (s *scratch) release(mark int) {
	for _, t := range s.held[mark:] {
		s.be.Free(t)
	}
	clear(s.held[mark:])
	s.held = s.held[:mark]
	s.err = nil
}

// Options configures Load.
type Options struct {
	// Experts provides expert weights; nil reads them from the checkpoint (LocalExperts).
	Experts Experts
	// Tracer, when set, sees every routing decision (tests and metrics).
	Tracer Tracer
	// Speculate makes every MoE block without a pre-gate predict its successor's experts (with the
	// successor's router on its own input) and pass them to Experts if it is a Predictor.
	Speculate bool
}

// Tracer observes routing. Calls happen on the goroutine running Step and must not block.
type Tracer interface {
	// Route is called once per MoE block per Step with the logits that decided the block's routing
	// ([tokens × experts]; a pre-gate's for a pre-gated block) and the choices ([tokens × topK]).
	Route(block int, logits []float32, choices []routing.Choice)
}

// Load builds the model a checkpoint's config names, computing on be (a *compute.CPU from
// compute.NewCPU, or a GPU backend): the dense weights are made backend tensors once, here.
func Load(ckpt *model.Checkpoint, be compute.Backend, opts Options) (Model, error) {
	cfg := ckpt.Config()
	if cfg == nil {
		return nil, fmt.Errorf("%w: %s has no config.json", ErrUnsupported, ckpt.Dir())
	}
	switch {
	case cfg.Switch != nil:
		return LoadSwitch(ckpt, be, opts)
	case cfg.Mixtral != nil:
		return LoadMixtral(ckpt, be, opts)
	}
	return nil, fmt.Errorf("%w: model_type %q", ErrUnsupported, cfg.ModelType)
}

// GenerateOptions configures Generate.
type GenerateOptions struct {
	MaxNewTokens int
	IgnoreEOS    bool
}

// Result is one sequence's generation.
type Result struct {
	PromptIDs    []int
	GeneratedIDs []int
}

// Stats times a generation.
type Stats struct {
	PrefillSeconds float64 // Start plus the first Step (gives the first new token)
	DecodeSeconds  float64 // every later Step
	DecodeTokens   int     // tokens produced by the later Steps, all sequences together
}

// DecodeTokensPerSecond is DecodeTokens / DecodeSeconds (0 when nothing was decoded).
func (s Stats) DecodeTokensPerSecond() float64 {
	if s.DecodeSeconds == 0 {
		return 0
	}
	return float64(s.DecodeTokens) / s.DecodeSeconds
}

// Generate decodes greedily: each step appends the argmax token to every unfinished sequence. A
// sequence stops after MaxNewTokens or after an EOS token (included) unless IgnoreEOS.
func Generate(ctx context.Context, m Model, prompts [][]int, opts GenerateOptions) ([]Result, Stats, error) {
	var st Stats
	if opts.MaxNewTokens < 0 {
		return nil, st, fmt.Errorf("%w: max new tokens %d", ErrBadInput, opts.MaxNewTokens)
	}
	info := m.Info()
	results := make([]Result, len(prompts))
	for i, p := range prompts {
		results[i].PromptIDs = append([]int(nil), p...)
		results[i].GeneratedIDs = []int{}
	}
	if opts.MaxNewTokens == 0 || len(prompts) == 0 {
		return results, st, nil
	}
	start := time.Now()
	seqs, err := m.Start(ctx, prompts)
	if err != nil {
		return nil, st, err
	}
	defer func() {
		for _, s := range seqs {
			s.Close()
		}
	}()
	active := make([]int, len(seqs)) // indexes into seqs still generating
	for i := range active {
		active[i] = i
	}
	for step := 0; len(active) > 0; step++ {
		batch := make([]*Sequence, len(active))
		for j, i := range active {
			batch[j] = seqs[i]
		}
		t0 := time.Now()
		logits, err := m.Step(ctx, batch, false)
		if err != nil {
			return nil, st, err
		}
		next := active[:0]
		for j, i := range active {
			tok := compute.ArgMax(logits[j])
			results[i].GeneratedIDs = append(results[i].GeneratedIDs, tok)
			seqs[i].Pending = append(seqs[i].Pending[:0], tok)
			done := len(results[i].GeneratedIDs) >= opts.MaxNewTokens || (!opts.IgnoreEOS && isEOS(info.EOS, tok))
			if !done {
				next = append(next, i)
			}
		}
		if step == 0 {
			st.PrefillSeconds = time.Since(start).Seconds()
		} else {
			st.DecodeSeconds += time.Since(t0).Seconds()
			st.DecodeTokens += len(active)
		}
		active = next
	}
	return results, st, nil
}

func isEOS(eos []int, tok int) bool {
	for _, e := range eos {
		if e == tok {
			return true
		}
	}
	return false
}

func checkIDs(ids []int, vocab int) error {
	for _, id := range ids {
		if id < 0 || id >= vocab {
			return fmt.Errorf("%w: token id %d out of range [0, %d)", ErrBadInput, id, vocab)
		}
	}
	return nil
}
