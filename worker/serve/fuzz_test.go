package serve

import (
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/pregate/pregate/model/chattemplate"
	"github.com/pregate/pregate/model/tokenizer"
)

// FuzzParseCompletion decodes completion bodies as the handler does (JSON, then the checks that
// turn it into engine requests): any input gets a request or an error that maps to a 4xx, never a
// panic and never a 500.
func FuzzParseCompletion(f *testing.F) {
	for _, seed := range []string{
		`{"model":"mixtral-tiny","prompt":[1,2,3],"max_tokens":8,"temperature":0,"return_token_ids":true}`,
		`{"prompt":[[1,2],[3]],"max_tokens":2,"stream":true,"ignore_eos":true}`,
		`{"prompt":"text","max_tokens":-1}`, `{"prompt":[],"n":2}`, `{"prompt":[1e30]}`, `[]`, `{"prompt":[1],"top_p":2}`,
	} {
		f.Add([]byte(seed))
	}
	s := &Server{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	s.cfg.ModelName = "mixtral-tiny"
	s.info.VocabSize = 1000
	f.Fuzz(func(t *testing.T, body []byte) {
		var req CompletionRequest
		job, err := parsed(t, s, body, &req, func() (*completionJob, error) { return s.parse(&req) })
		if err != nil {
			return
		}
		for _, r := range job.reqs {
			// What the server queues: parse, then submit's check (ids are checked against the
			// vocabulary there, for text and token-id prompts alike).
			if s.check(r) != nil {
				return
			}
			if len(r.Prompt) == 0 || r.MaxTokens <= 0 {
				t.Fatalf("accepted %+v", r)
			}
			for _, id := range r.Prompt {
				if id < 0 || id >= s.info.VocabSize {
					t.Fatalf("accepted token id %d (vocab %d)", id, s.info.VocabSize)
				}
			}
		}
	})
}

// FuzzParseChat decodes chat bodies and renders them with Mixtral's template and Mistral's
// tokenizer as the handler does: a job or a 4xx, never a panic and never a 500.
func FuzzParseChat(f *testing.F) {
	for _, seed := range []string{
		`{"messages":[{"role":"user","content":"Hello"}],"max_tokens":8}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"assistant","content":null}],"n":2,"stop":["x"]}`,
		`{"messages":[{"role":"system","content":"s"}],"logprobs":true,"top_logprobs":30}`, `{"messages":[]}`, `{"messages":[{}]}`,
		`{"messages":[{"role":"user","content":"{{ raise_exception('x') }}"}]}`,
	} {
		f.Add([]byte(seed))
	}
	tok, err := tokenizer.LoadSentencePiece(filepath.Join("..", "..", "model", "tokenizer", "testdata", "mistral", "tokenizer.model"))
	if err != nil {
		f.Fatal(err)
	}
	s := &Server{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	s.cfg.ModelName, s.cfg.Tokenizer, s.cfg.MaxModelLen = "m", tok, 256
	s.info.VocabSize = tok.VocabSize()
	if s.chatTemplate, err = chattemplate.Parse(mixtralTemplate, chattemplate.Tokens{BOS: "<s>", EOS: "</s>"}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req ChatRequest
		job, err := parsed(t, s, body, &req, func() (*completionJob, error) { return s.parseChat(&req) })
		if err != nil {
			return
		}
		for _, r := range job.reqs {
			if len(r.Prompt) == 0 || r.MaxTokens <= 0 {
				t.Fatalf("accepted %+v", r)
			}
		}
	})
}

// parsed decodes body into req and parses it as the handler does; a rejection must be a 4xx.
func parsed(t *testing.T, s *Server, body []byte, req any, parse func() (*completionJob, error)) (*completionJob, error) {
	t.Helper()
	if err := decodeRequest(body, req); err != nil {
		if status, _ := s.errorOf(err); status >= 500 {
			t.Fatalf("bad JSON answered %d: %v", status, err)
		}
		return nil, err
	}
	job, err := parse()
	if err != nil {
		if status, _ := s.errorOf(err); status >= 500 || !errors.Is(err, ErrBadRequest) && !errors.Is(err, errModelNotFound) {
			t.Fatalf("rejected with %d: %v", status, err)
		}
	}
	return job, err
}
