package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/synth"
)

func newSynthCmd() *cobra.Command {
	var (
		opts  synth.Options
		dtype string
	)
	cmd := &cobra.Command{
		Use:   "synth --arch switch|mixtral --preset NAME --out DIR",
		Short: "Write a random-weight checkpoint with the exact shape of a real model",
		Long: "Write a random-weight HuggingFace checkpoint (config.json + sharded safetensors) shaped like a real\n" +
			"model, for benchmarks and for trying a deployment without downloading weights.\n\nPresets: " +
			strings.Join(synth.Presets(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch strings.ToLower(dtype) {
			case "f32", "float32":
				opts.DType = model.F32
			case "bf16", "bfloat16":
				opts.DType = model.BF16
			default:
				return fmt.Errorf("--dtype %q: want f32 or bf16", dtype)
			}
			start := time.Now()
			last := time.Time{}
			// A progress bar on a terminal, a line every few seconds otherwise (logs).
			w := cmd.ErrOrStderr()
			tty, every, format := isTerminal(w), 5*time.Second, "synth: %.1f / %.1f MiB\n"
			if tty {
				every, format = 200*time.Millisecond, "\rsynth: %6.1f / %.1f MiB"
			}
			progress := func(done, total int64) {
				if time.Since(last) < every && done < total {
					return
				}
				last = time.Now()
				fmt.Fprintf(w, format, float64(done)/(1<<20), float64(total)/(1<<20))
			}
			if err := synth.Write(opts, progress); err != nil {
				return err
			}
			if tty {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "synth: wrote %s in %.1fs\n", opts.Out, time.Since(start).Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Arch, "arch", "", "architecture: switch or mixtral")
	f.StringVar(&opts.Preset, "preset", "", "model shape, e.g. switch-base-8 or mixtral-8x7b")
	f.StringVar(&opts.Out, "out", "", "output directory")
	f.StringVar(&dtype, "dtype", "f32", "weight dtype: f32 or bf16")
	f.Int64Var(&opts.Seed, "seed", 1, "random seed")
	f.IntVar(&opts.Layers, "layers", 0, "override the number of blocks (per stack for switch)")
	f.IntVar(&opts.Experts, "experts", 0, "override the number of experts")
	f.IntVar(&opts.DModel, "d-model", 0, "override the hidden size")
	f.IntVar(&opts.DFF, "d-ff", 0, "override the FFN size")
	f.IntVar(&opts.Heads, "heads", 0, "override the number of attention heads")
	f.IntVar(&opts.Vocab, "vocab", 0, "override the vocabulary size")
	f.BoolVar(&opts.PreGates, "pre-gates", false, "also write pre-gate matrices (switch), making a pre-gated model")
	f.StringVar(&opts.Tokenizer, "tokenizer", "", "copy the tokenizer of this checkpoint directory (tokenizer.json or tokenizer.model/spiece.model, tokenizer_config.json) into the output, so the model speaks text")
	for _, req := range []string{"arch", "preset", "out"} {
		_ = cmd.MarkFlagRequired(req)
	}
	return cmd
}
