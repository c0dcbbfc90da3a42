// Package deptest enforces the dependency rules of docs/ARCHITECTURE.md over `go list -deps`, so a
// stray import fails the build's tests instead of surfacing in a review.
package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/pregate/pregate"

type pkg struct {
	ImportPath string
	Deps       []string
	Standard   bool
}

// deps lists the packages of the module with their transitive dependencies.
func deps(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json=ImportPath,Deps", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	m := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		m[p.ImportPath] = p.Deps
	}
	return m
}

func TestDependencyRules(t *testing.T) {
	all := deps(t)
	rules := []struct {
		pkg       string // package the rule covers, with its subpackages unless exact
		exact     bool
		forbidden []string // import path prefixes it must not depend on
		allowed   []string // project packages it may depend on (nil: any)
	}{
		// routing holds the cluster's identities (ExpertKey, Replica, the snapshot's entries with their
		// blob digests): it may import the blob format for the digest type, and nothing networked.
		{pkg: "routing", allowed: []string{"expertstore/blob", "model"}, forbidden: []string{"google.golang.org/grpc", "go.etcd.io/", "github.com/hashicorp/memberlist"}},
		{pkg: "model", exact: true, allowed: []string{}},
		{pkg: "model/synth", allowed: []string{"model", "internal/atomicfile"}},
		{pkg: "compute", allowed: []string{"model"}},
		// The engine imports routing for the gate math; routing's snapshot types bring the blob format
		// (for the digest type; pure code, no I/O) along.
		{pkg: "engine", allowed: []string{"model", "compute", "routing", "expertstore/blob"}},
		{pkg: "api", allowed: []string{"api"}},
		{pkg: "internal/lifecycle", allowed: []string{}},
		{pkg: "expertstore", exact: true, allowed: []string{"api", "model", "routing", "internal/lifecycle", "expertstore/blob", "expertstore/dataplane", "expertstore/client", "internal/membership", "internal/atomicfile"}},
		{pkg: "expertstore/blob", allowed: []string{"model"}},
		{pkg: "expertstore/dataplane", allowed: []string{}},
		{pkg: "expertstore/client", allowed: []string{"api", "model", "routing", "expertstore/blob", "expertstore/dataplane"}},
		{pkg: "internal/membership", allowed: []string{}},
		{pkg: "internal/atomicfile", allowed: []string{}},
		{pkg: "internal/modelblobs", allowed: []string{"model", "routing", "expertstore/blob"}},
		{pkg: "internal/placement", allowed: []string{"routing", "model", "expertstore/blob"}},
		{pkg: "internal/embedetcd", allowed: []string{}},
		// The control plane never depends on the data plane's consumers, and the reverse.
		{pkg: "coordinator", allowed: []string{"api", "model", "routing", "internal/lifecycle", "expertstore/blob", "expertstore/dataplane", "expertstore/client",
			"internal/placement", "internal/membership", "internal/modelblobs", "internal/embedetcd", "internal/atomicfile"}},
		{pkg: "worker/serve", allowed: []string{"model", "compute", "routing", "engine", "expertstore/blob", "internal/lifecycle"}},
		{pkg: "worker", exact: true, allowed: []string{"api", "model", "compute", "routing", "engine", "internal/lifecycle", "expertstore/blob", "expertstore/dataplane",
			"expertstore/client", "internal/placement", "internal/membership", "internal/atomicfile", "worker/serve"}},
	}
	checked := 0
	for path, ds := range all {
		rel := strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
		for _, d := range ds {
			// Only the cuda package may pull in gorgonia.org/cu (its init exits without a driver),
			// and no production package may depend on testing.
			if strings.HasPrefix(d, "gorgonia.org/cu") && !strings.HasPrefix(rel, "cuda") {
				t.Errorf("%s depends on %s", path, d)
			}
			if d == "testing" && !strings.Contains(rel, "test") {
				t.Errorf("%s depends on testing", path)
			}
		}
		for _, r := range rules {
			if rel != r.pkg && (r.exact || !strings.HasPrefix(rel, r.pkg+"/")) {
				continue
			}
			checked++
			for _, d := range ds {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s must not depend on %s", path, d)
					}
				}
				if r.allowed == nil || !strings.HasPrefix(d, module+"/") {
					continue
				}
				dep := strings.TrimPrefix(d, module+"/")
				ok := false
				for _, a := range r.allowed {
					ok = ok || dep == a || strings.HasPrefix(dep, a+"/")
				}
				if !ok {
					t.Errorf("%s must not depend on %s", path, d)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages matched a rule: is go list seeing the module?", checked)
	}
}
