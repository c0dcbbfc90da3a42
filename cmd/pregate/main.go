// Command pregate serves Mixture-of-Experts models whose experts live on a pool of CPU store nodes
// and stream into a small GPU expert cache ahead of use (Pre-gated MoE). This file only wires the
// subcommands; their logic lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

func main() {
	ctx, stop := signalContext(context.Background())
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	os.Exit(exitStatus(ctx, err))
}

// exitStatus reports err on stderr and returns the process's exit status: 0 without an error, an
// exitError's code, 128 + the signal's number when a signal stopped the command, 1 otherwise.
func exitStatus(ctx context.Context, err error) int {
	if err == nil {
		return 0
	}
	var sig errSignal
	if errors.As(context.Cause(ctx), &sig) && errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "pregate:", sig)
		return sig.exitCode()
	}
	fmt.Fprintln(os.Stderr, "pregate:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
