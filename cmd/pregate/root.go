package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "pregate",
		Short:         "Serve Mixture-of-Experts models with experts streamed from a store pool",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newGenerateCmd(), newSynthCmd(), withEnv(newStoreCmd()), newBenchCmd(),
		withEnv(newCoordinatorCmd()), withEnv(newImportCmd()), withEnv(newStatusCmd()), withEnv(newDrainCmd()),
		withEnv(newWorkerCmd()), newUpCmd(), withEnv(newCompleteCmd()), newCertsCmd(), newFlagsCmd())
	return root
}

// parseIDs parses "3 17 42" (spaces or commas) into token ids.
func parseIDs(s string) ([]int, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' || r == '\n' })
	if len(fields) == 0 {
		return nil, fmt.Errorf("empty token id list %q", s)
	}
	ids := make([]int, len(fields))
	for i, f := range fields {
		v, err := strconv.Atoi(f)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("bad token id %q in %q: want a non-negative integer", f, s)
		}
		ids[i] = v
	}
	return ids, nil
}

func joinIDs(w io.Writer, ids []int) {
	for i, id := range ids {
		if i > 0 {
			fmt.Fprint(w, " ")
		}
		fmt.Fprint(w, id)
	}
}

// isTerminal reports whether w is a character device (a terminal), for progress bars.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
