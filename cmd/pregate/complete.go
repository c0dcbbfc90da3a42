package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/worker"
)

// newCompleteCmd sends one completion to a worker: a smoke test for deployments (`helm test`),
// and a client that needs nothing but the binary.
func newCompleteCmd() *cobra.Command {
	var (
		url, model, prompt, output string
		apiKeyFile                 string
		maxTokens                  int
		timeout                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "complete --url http://worker:8000 --model NAME --prompt-ids \"1 2 3\"",
		Short: "Send one completion to a worker's OpenAI API and print the generated token ids",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			if url == "" || model == "" {
				return errors.New("--url and --model are required")
			}
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			ids, err := parseIDs(prompt)
			if err != nil {
				return fmt.Errorf("--prompt-ids: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			body, _ := json.Marshal(map[string]any{"model": model, "prompt": ids, "max_tokens": maxTokens,
				"temperature": 0, "return_token_ids": true})
			if !strings.Contains(url, "://") {
				url = "http://" + url
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(url, "/")+"/v1/completions", bytes.NewReader(body))
			if err != nil {
				return fmt.Errorf("--url %q: %w", url, err)
			}
			req.Header.Set("Content-Type", "application/json")
			if apiKeyFile != "" {
				keys, err := worker.LoadAPIKeys(apiKeyFile)
				if err != nil {
					return fmt.Errorf("--api-key-file: %w", err)
				}
				req.Header.Set("Authorization", "Bearer "+keys[0])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("worker at %s: %w", url, err)
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
			if err != nil {
				return fmt.Errorf("worker at %s: %w", url, err)
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("worker at %s: %s: %s", url, resp.Status, bytes.TrimSpace(raw))
			}
			var c struct {
				Choices []struct {
					TokenIDs     []int  `json:"token_ids"`
					FinishReason string `json:"finish_reason"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(raw, &c); err != nil || len(c.Choices) != 1 {
				return fmt.Errorf("worker at %s: unexpected answer %s", url, raw)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				_, err := w.Write(append(raw, '\n'))
				return err
			}
			joinIDs(w, c.Choices[0].TokenIDs)
			fmt.Fprintf(w, "\t(%s)\n", c.Choices[0].FinishReason)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "", "the worker's HTTP address (env PREGATE_URL)")
	f.StringVar(&model, "model", "", "the model's name")
	f.StringVar(&prompt, "prompt-ids", "1 2 3", "prompt token ids")
	f.IntVar(&maxTokens, "max-tokens", 8, "tokens to generate")
	f.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	f.StringVarP(&output, "output", "o", "text", "text or json (the API's answer)")
	f.StringVar(&apiKeyFile, "api-key-file", "", "file whose first key is sent as Authorization: Bearer (a worker with --api-key-file)")
	return cmd
}
