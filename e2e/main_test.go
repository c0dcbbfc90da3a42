//go:build e2e

package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	// pregateBin is the binary every node runs: $PREGATE_E2E_BIN, or built by TestMain.
	pregateBin string
	// skipReason is why this machine cannot run the tests ("" when it can).
	skipReason string
	// buildErr is why pregate could not be built.
	buildErr error
	// repoRoot is the module's root, the parent of this package's directory.
	repoRoot string
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" { // the test binary re-executed on a node
		os.Exit(runHelper(h))
	}
	flag.Parse()
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)

	skipReason = preflight()
	var tmp string
	if skipReason == "" {
		if removed := sweepStale(); len(removed) > 0 {
			fmt.Printf("e2e: removed leftovers of an earlier run: %s\n", strings.Join(removed, " "))
		}
		tmp, pregateBin, buildErr = buildPregate()
		guardTimeout()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			s := <-sig
			fmt.Printf("e2e: %v: removing every network\n", s)
			sweepLive(true)
			os.RemoveAll(tmp)
			os.Exit(2)
		}()
	}

	code := m.Run()
	sweepLive(false) // normally empty: every test's cleanup removed its network
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	fmt.Println("\ne2e results:")
	writeResults(os.Stdout)
	if path := os.Getenv("PREGATE_E2E_RESULTS"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Printf("e2e: PREGATE_E2E_RESULTS: %v\n", err)
		} else {
			writeResults(f)
			f.Close()
		}
	}
	os.Exit(code)
}

// preflight says why the tests cannot run here ("" when they can): they need root, ip and tc, and
// to create a network namespace and a veth pair.
func preflight() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not found"
		}
	}
	id := fmt.Sprintf("%04x", os.Getpid()&0xffff)
	ns, veth := namePrefix+id+"-probe", namePrefix+id+"-pa"
	defer func() {
		_ = ip("netns", "del", ns)
		_ = ip("link", "del", veth)
	}()
	if err := ip("netns", "add", ns); err != nil {
		return err.Error()
	}
	if err := ip("link", "add", veth, "type", "veth", "peer", "name", namePrefix+id+"-pb"); err != nil {
		return err.Error()
	}
	return ""
}

// buildPregate returns $PREGATE_E2E_BIN, or builds ./cmd/pregate into a new temporary directory.
func buildPregate() (tmp, bin string, err error) {
	if bin := os.Getenv("PREGATE_E2E_BIN"); bin != "" {
		bin, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(bin)
		}
		return "", bin, err
	}
	if _, err := os.Stat(filepath.Join(repoRoot, "go.mod")); err != nil {
		return "", "", fmt.Errorf("repository root not found from %s: %w", repoRoot, err)
	}
	tmp, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", binDirPrefix, os.Getpid())) // the sweep's to remove if we crash
	if err != nil {
		return "", "", err
	}
	bin = filepath.Join(tmp, "pregate")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(gobin, "build", "-o", bin, "./cmd/pregate")
	cmd.Dir = repoRoot
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return tmp, "", fmt.Errorf("go build ./cmd/pregate: %v\n%s", err, out)
	}
	fmt.Printf("e2e: built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
	return tmp, bin, nil
}

// guardTimeout removes every network 20 s before go test's -timeout would panic the process
// (a panic on timeout runs no cleanup); the tests still running then fail on their own.
func guardTimeout() {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return
	}
	d, err := time.ParseDuration(f.Value.String())
	if err != nil || d <= 30*time.Second {
		return
	}
	time.AfterFunc(d-20*time.Second, func() {
		fmt.Println("e2e: the test timeout is near: removing every network")
		sweepLive(false) // the tests still running fail, and their cleanups remove their dirs
	})
}
