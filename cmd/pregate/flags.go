package main

import (
	"encoding/json"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envAnnotation marks a command whose flags fall back to PREGATE_<FLAG> (envFallback).
const envAnnotation = "pregate/env"

// withEnv marks cmd as taking its flags from the environment too (it calls envFallback).
func withEnv(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[envAnnotation] = "true"
	return cmd
}

// flagInfo is one flag as `pregate flags` describes it.
type flagInfo struct {
	Name      string `json:"name"`
	Shorthand string `json:"shorthand,omitempty"`
	Type      string `json:"type"`
	Default   string `json:"default"`
	Env       string `json:"env,omitempty"` // PREGATE_<FLAG>, for commands that read the environment
	Usage     string `json:"usage"`
}

// envName is the environment variable a flag falls back to.
func envName(flag string) string {
	return "PREGATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// newFlagsCmd prints every subcommand's flags (and the PREGATE_* variable each falls back to) as
// JSON: what deployment tooling and the chart's tests check their command lines against.
func newFlagsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "flags",
		Short:  "Print every subcommand's flags and environment variables as JSON (for tooling)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := map[string][]flagInfo{}
			var walk func(c *cobra.Command)
			walk = func(c *cobra.Command) {
				if c.Runnable() && c.HasParent() {
					var fs []flagInfo
					c.Flags().VisitAll(func(f *pflag.Flag) {
						fi := flagInfo{Name: f.Name, Shorthand: f.Shorthand, Type: f.Value.Type(), Default: f.DefValue, Usage: f.Usage}
						if c.Annotations[envAnnotation] != "" {
							fi.Env = envName(f.Name)
						}
						fs = append(fs, fi)
					})
					out[strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ")] = fs
				}
				for _, sub := range c.Commands() {
					walk(sub)
				}
			}
			walk(cmd.Root())
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}
