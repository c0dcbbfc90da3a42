package charttest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// flagSpec is `pregate flags` of the binary built from this repository: subcommand → flag name →
// the PREGATE_* variable it falls back to ("" when none).
var flagSpec map[string]map[string]string

// chartDir is the repository's helm/pregate.
var chartDir string

// pendingComplete lists the flags of `pregate complete` as the helm test Pod uses them, for as long
// as the binary has no such subcommand (it is being added on another branch). Once `pregate flags`
// lists "complete", its own flags are checked instead, and this list must be among them.
var pendingComplete = map[string]string{"url": "", "model": "", "prompt-ids": "", "max-tokens": ""}

// TestMain builds cmd/pregate from the repository root (this module cannot import it) and reads its
// flags, so that every flag and PREGATE_* variable the chart sets is checked against the real binary.
func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "charttest:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	var err error
	if chartDir, err = ChartDir("."); err != nil {
		return 0, err
	}
	root := filepath.Dir(filepath.Dir(chartDir))
	if err := checkModule(root); err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "charttest")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "pregate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/pregate")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("go build ./cmd/pregate: %w\n%s", err, out)
	}
	out, err := exec.Command(bin, "flags").Output()
	if err != nil {
		return 0, fmt.Errorf("pregate flags: %w", err)
	}
	if flagSpec, err = parseFlagSpec(out); err != nil {
		return 0, err
	}
	if _, ok := flagSpec["complete"]; !ok {
		flagSpec["complete"] = pendingComplete
	}
	return m.Run(), nil
}

// checkModule makes sure root is pregate's module (the chart's tests build its binary from there).
func checkModule(root string) error {
	f, err := os.Open(filepath.Join(root, "go.mod"))
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if sc.Scan() && strings.TrimSpace(sc.Text()) == "module github.com/pregate/pregate" {
		return nil
	}
	return fmt.Errorf("%s is not the pregate module's root", root)
}

func parseFlagSpec(out []byte) (map[string]map[string]string, error) {
	var raw map[string][]struct {
		Name string `json:"name"`
		Env  string `json:"env"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("pregate flags: %w", err)
	}
	spec := map[string]map[string]string{}
	for cmd, flags := range raw {
		spec[cmd] = map[string]string{}
		for _, f := range flags {
			spec[cmd][f.Name] = f.Env
		}
	}
	for _, cmd := range []string{"coordinator", "store", "worker", "import", "status"} {
		if len(spec[cmd]) == 0 {
			return nil, fmt.Errorf("pregate flags lists no flags for %q", cmd)
		}
	}
	return spec, nil
}
