package serve

import (
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
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
		if err := json.Unmarshal(body, &req); err != nil {
			if status, _ := s.errorOf(jsonError(err)); status >= 500 {
				t.Fatalf("bad JSON answered %d", status)
			}
			return
		}
		job, err := s.parse(&req)
		if err != nil {
			if status, _ := s.errorOf(err); status >= 500 || !errors.Is(err, ErrBadRequest) && !errors.Is(err, errModelNotFound) {
				t.Fatalf("rejected with %d: %v", status, err)
			}
			return
		}
		for _, r := range job.reqs {
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
