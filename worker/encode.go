package worker

import (
	"context"

	"github.com/pregate/pregate/engine"
)

// pipelinedEncoder is pipelinedModel for a model whose encoder pass runs in slices
// (engine.Encoder): each slice ends with EndStep, as a Step does, so that a slice's expert pins
// end with it.
type pipelinedEncoder struct {
	engine.Model
	enc engine.Encoder
	p   *Pipeline
}

// BeginEncode implements engine.Encoder.
func (m pipelinedEncoder) BeginEncode(prompts [][]int) (engine.EncodeJob, error) {
	j, err := m.enc.BeginEncode(prompts)
	if err != nil {
		return nil, err
	}
	return pipelinedJob{EncodeJob: j, p: m.p}, nil
}

type pipelinedJob struct {
	engine.EncodeJob
	p *Pipeline
}

// Run implements engine.EncodeJob.
func (j pipelinedJob) Run(ctx context.Context, tokens int) (bool, error) {
	defer j.p.EndStep()
	return j.EncodeJob.Run(ctx, tokens)
}

// wrapEncoder returns wrapped (m with p's step bookkeeping, WrapModel) with m's sliced encoder
// passes, when m has them.
func wrapEncoder(wrapped, m engine.Model, p *Pipeline) engine.Model {
	if enc, ok := m.(engine.Encoder); ok {
		return pipelinedEncoder{Model: wrapped, enc: enc, p: p}
	}
	return wrapped
}
