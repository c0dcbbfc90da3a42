package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// errSignal is the cause of the context a first SIGINT or SIGTERM cancels.
type errSignal struct{ sig os.Signal }

func (e errSignal) Error() string { return fmt.Sprintf("stopped by %v", e.sig) }

// exitCode is the shell's convention for a process a signal ended: 128 + its number.
func (e errSignal) exitCode() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

// signalContext returns a context that the first SIGINT or SIGTERM cancels (its cause an
// errSignal): commands stop at their next check of it, daemons shut down gracefully. A second signal
// exits the process at once, whatever it is doing. stop undoes the signal handling.
func signalContext(parent context.Context) (ctx context.Context, stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancelCause(parent)
	done := make(chan struct{})
	go func() {
		handleSignals(sigs, done, cancel, os.Exit, os.Stderr)
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// handleSignals applies the two-signal rule to sigs until done closes: the first cancels with an
// errSignal, the second calls exit with 128 + the signal's number.
func handleSignals(sigs <-chan os.Signal, done <-chan struct{}, cancel context.CancelCauseFunc, exit func(int), stderr io.Writer) {
	first := true
	for {
		select {
		case <-done:
			return
		case sig := <-sigs:
			if first {
				first = false
				fmt.Fprintf(stderr, "pregate: %v: stopping (again to exit at once)\n", sig)
				cancel(errSignal{sig})
				continue
			}
			fmt.Fprintf(stderr, "pregate: %v again: exiting now\n", sig)
			exit(errSignal{sig}.exitCode())
			return
		}
	}
}
