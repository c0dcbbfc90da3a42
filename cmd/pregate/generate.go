package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
)

type generateOutput struct {
	Results []generateResult `json:"results"`
	Stats   generateStats    `json:"stats"`
}

type generateResult struct {
	PromptIDs    []int  `json:"prompt_ids"`
	GeneratedIDs []int  `json:"generated_ids"`
	Text         string `json:"text,omitempty"` // the generated ids decoded, when the checkpoint has a tokenizer
}

type generateStats struct {
	LoadSeconds           float64 `json:"load_seconds"`
	PrefillSeconds        float64 `json:"prefill_seconds"`
	DecodeTokensPerSecond float64 `json:"decode_tokens_per_second"`
	DecodeTokens          int     `json:"decode_tokens"`
	Threads               int     `json:"threads,omitempty"` // the CPU backend's
	Device                string  `json:"device"`
}

func newGenerateCmd() *cobra.Command {
	var (
		dir       string
		prompts   []string
		texts     []string
		maxNew    int
		ignoreEOS bool
		threads   int
		device    string
		output    string
	)
	cmd := &cobra.Command{
		Use:   "generate --model DIR (--prompt-ids \"3 17 42\" | --prompt TEXT)... --max-new-tokens N",
		Short: "Greedy-decode token ids (or text, with the checkpoint's tokenizer) with a local checkpoint on the CPU or a GPU",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "text" {
				return fmt.Errorf("-o %q: want json or text", output)
			}
			if len(prompts) == 0 && len(texts) == 0 {
				return fmt.Errorf("no --prompt-ids or --prompt given")
			}
			if maxNew < 0 {
				return fmt.Errorf("--max-new-tokens %d: want >= 0", maxNew)
			}
			spec, err := parseDevice(device)
			if err != nil {
				return err
			}
			var ids [][]int
			for _, p := range prompts {
				v, err := parseIDs(p)
				if err != nil {
					return fmt.Errorf("--prompt-ids: %w", err)
				}
				ids = append(ids, v)
			}
			tok, err := tokenizer.Load(dir)
			switch {
			case err == nil:
			case len(texts) > 0:
				return fmt.Errorf("--prompt needs the checkpoint's tokenizer: %w", err)
			default:
				tok = nil // token ids in, token ids out
			}
			for _, text := range texts {
				v, err := tok.Encode(text, true)
				if err != nil {
					return fmt.Errorf("--prompt: %w", err)
				}
				ids = append(ids, v)
			}
			start := time.Now()
			ckpt, err := model.OpenCheckpoint(dir)
			if err != nil {
				return err
			}
			defer ckpt.Close()
			if err := ckpt.Validate(); err != nil {
				return err
			}
			be, devName, release, err := openBackend(spec, threads)
			if err != nil {
				return err
			}
			defer release()
			m, err := engine.Load(ckpt, be, engine.Options{})
			if err != nil {
				return err
			}
			defer m.Close()
			load := time.Since(start).Seconds()
			res, st, err := engine.Generate(cmd.Context(), m, ids, engine.GenerateOptions{MaxNewTokens: maxNew, IgnoreEOS: ignoreEOS})
			if err != nil {
				return err
			}
			out := generateOutput{Stats: generateStats{LoadSeconds: load, PrefillSeconds: st.PrefillSeconds,
				DecodeTokensPerSecond: st.DecodeTokensPerSecond(), DecodeTokens: st.DecodeTokens, Device: devName}}
			if cpu, ok := be.(*compute.CPU); ok {
				out.Stats.Threads = cpu.Threads()
			}
			for _, r := range res {
				gr := generateResult{PromptIDs: r.PromptIDs, GeneratedIDs: r.GeneratedIDs}
				if tok != nil {
					gr.Text = tok.Decode(r.GeneratedIDs, true)
				}
				out.Results = append(out.Results, gr)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				return enc.Encode(out)
			}
			for _, r := range out.Results {
				if tok != nil {
					fmt.Fprintf(w, "%q\n", r.Text)
					continue
				}
				joinIDs(w, r.GeneratedIDs)
				fmt.Fprintln(w)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "load %.2fs, prefill %.3fs, decode %.2f tokens/s (%s)\n",
				load, st.PrefillSeconds, st.DecodeTokensPerSecond(), devName)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "checkpoint directory (config.json + safetensors)")
	f.StringArrayVar(&prompts, "prompt-ids", nil, "prompt token ids, e.g. \"3 17 42\"; repeat for a batch")
	f.StringArrayVar(&texts, "prompt", nil, "prompt text, encoded with the checkpoint's tokenizer; repeat for a batch (after any --prompt-ids)")
	f.IntVar(&maxNew, "max-new-tokens", 16, "tokens to generate per prompt")
	f.BoolVar(&ignoreEOS, "ignore-eos", false, "keep generating after EOS")
	f.IntVar(&threads, "threads", 0, "compute threads (0: all cores)")
	f.StringVar(&device, "device", "cpu", deviceFlagUsage)
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}
