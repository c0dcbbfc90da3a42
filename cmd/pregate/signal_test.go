package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run the real binary's main in a child process (the test binary re-executed
// with PREGATE_TEST_MAIN=1 and the command line after "--"), to send it real signals.
func TestMain(m *testing.M) {
	if os.Getenv("PREGATE_TEST_MAIN") == "1" {
		for i, a := range os.Args {
			if a == "--" {
				os.Args = append([]string{"pregate"}, os.Args[i+1:]...)
				break
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}

func TestHandleSignals(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	done := make(chan struct{})
	ctx, cancel := context.WithCancelCause(context.Background())
	exited := make(chan int, 1)
	var stderr bytes.Buffer
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		handleSignals(sigs, done, cancel, func(code int) { exited <- code }, &stderr)
	}()

	sigs <- syscall.SIGTERM
	<-ctx.Done()
	var sig errSignal
	if !errors.As(context.Cause(ctx), &sig) || sig.sig != syscall.SIGTERM {
		t.Fatalf("cause %v, want SIGTERM", context.Cause(ctx))
	}
	select {
	case code := <-exited:
		t.Fatalf("the first signal exited (%d)", code)
	case <-time.After(50 * time.Millisecond):
	}
	sigs <- syscall.SIGINT
	if code := <-exited; code != 130 {
		t.Fatalf("second signal (SIGINT) exited with %d, want 130", code)
	}
	<-finished
	if !strings.Contains(stderr.String(), "again to exit at once") || !strings.Contains(stderr.String(), "exiting now") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

// TestGenerateStopsOnSIGTERM runs a long decode in a child process and checks that SIGTERM stops it
// within two seconds with status 143, and that a SIGINT then a SIGTERM during a decode that would
// take minutes exit just as fast.
func TestGenerateStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts child processes")
	}
	dir := t.TempDir()
	if _, stderr, err := runCmd(t, "synth", "--arch", "switch", "--preset", "switch-base-8", "--layers", "4",
		"--d-model", "256", "--d-ff", "1024", "--heads", "8", "--out", dir); err != nil {
		t.Fatalf("synth: %v (%s)", err, stderr)
	}
	for _, tt := range []struct {
		name string
		sigs []syscall.Signal
		want []int // two signals sent back to back may arrive in either order
	}{
		{"SIGTERM", []syscall.Signal{syscall.SIGTERM}, []int{143}},
		{"SIGINT", []syscall.Signal{syscall.SIGINT}, []int{130}},
		{"SIGINT,SIGTERM", []syscall.Signal{syscall.SIGINT, syscall.SIGTERM}, []int{130, 143}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$", "--", "generate", "--model", dir,
				"--prompt-ids", "100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115",
				"--max-new-tokens", "1000000", "--ignore-eos", "--threads", "2", "-o", "json")
			cmd.Env = append(os.Environ(), "PREGATE_TEST_MAIN=1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				t.Fatalf("generate ended before the signal: %v\n%s", err, stderr.String())
			case <-time.After(1500 * time.Millisecond): // loaded and decoding
			}
			start := time.Now()
			for _, s := range tt.sigs {
				if err := cmd.Process.Signal(s); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			select {
			case err = <-exited:
			case <-time.After(2 * time.Second):
				cmd.Process.Kill()
				<-exited
				t.Fatalf("still running 2 s after %v\n%s", tt.sigs, stderr.String())
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !slices.Contains(tt.want, ee.ExitCode()) {
				t.Fatalf("exit %v, want status %d\n%s", err, tt.want, stderr.String())
			}
			t.Logf("stopped %v after %v", tt.sigs, time.Since(start).Round(time.Millisecond))
		})
	}
}
