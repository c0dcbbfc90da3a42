// Package deptest enforces the dependency rules of docs/ARCHITECTURE.md over `go list -deps`, so a
// stray import fails the build's tests instead of surfacing in a review.
//
// The packages stand on floors, and a package imports only from its own floor or below:
//
//	assemblies   cmd/pregate, bench, cluster          whole clusters in one process; nothing imports them
//	daemons      coordinator, worker, expertstore     (+ worker/serve); they meet only in etcd
//	libraries    expertstore/{client,blob,dataplane}, engine, compute, model, routing, api, internal/*
package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pregate/pregate"

type pkg struct {
	ImportPath string
	Deps       []string
}

// deps lists the packages of the module with their transitive dependencies (production code only:
// go list without -test), as built with the given build tags.
func deps(t *testing.T, tags ...string) map[string][]string {
	t.Helper()
	args := []string{"list", "-deps=false", "-json=ImportPath,Deps"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, module+"/...")...)
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
		m[strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")] = p.Deps
	}
	return m
}

// rule says what the packages under pkg (or pkg alone, with exact) may depend on.
type rule struct {
	pkg       string
	exact     bool
	forbidden []string // import path prefixes it must not depend on
	allowed   []string // project packages (and their subpackages) it may depend on; nil: any
}

func (r rule) covers(rel string) bool {
	return rel == r.pkg || !r.exact && strings.HasPrefix(rel, r.pkg+"/")
}

// assemblies and daemons are the upper floors: no library imports them.
var (
	assemblies = []string{"cmd/pregate", "bench", "cluster"}
	daemons    = []string{"coordinator", "worker", "expertstore"} // expertstore itself, not its libraries
)

var rules = []rule{
	// Libraries.
	// routing holds the cluster's identities (ExpertKey, Replica, the snapshot's entries with their
	// blob digests): it may import the blob format for the digest type, and nothing networked.
	{pkg: "routing", allowed: []string{"expertstore/blob", "model"}, forbidden: []string{"google.golang.org/grpc", "go.etcd.io/", "github.com/hashicorp/memberlist"}},
	{pkg: "model", exact: true, allowed: []string{}},
	{pkg: "model/synth", allowed: []string{"model", "model/tokenizer", "internal/atomicfile"}},
	// Tokenizers stand alone: text in, ids out, no model weights.
	{pkg: "model/tokenizer", allowed: []string{}},
	// Chat templates: Jinja (gonja) over messages and special-token strings, no tokenizer.
	{pkg: "model/chattemplate", allowed: []string{}},
	{pkg: "compute", exact: true, allowed: []string{"model"}},
	// The backend conformance suite sees a backend only through compute.Backend (a GPU backend's
	// tests run it too).
	{pkg: "compute/backendtest", allowed: []string{"compute", "model"}},
	// The GPU device (built only with -tags cuda): the backend over compute's tensors and the
	// expert blobs' device views. It must not import the worker (a library does not import a
	// daemon); the worker's interfaces are met by an adapter in cmd/pregate.
	{pkg: "cuda", allowed: []string{"compute", "model", "expertstore/blob"}},
	// The engine imports routing for the gate math; routing's snapshot types bring the blob format
	// (for the digest type; pure code, no I/O) along.
	{pkg: "engine", allowed: []string{"model", "compute", "routing", "expertstore/blob"}},
	{pkg: "api", allowed: []string{"api"}},
	{pkg: "expertstore/blob", allowed: []string{"model"}},
	{pkg: "expertstore/dataplane", allowed: []string{}},
	{pkg: "expertstore/client", allowed: []string{"api", "model", "routing", "expertstore/blob", "expertstore/dataplane", "internal/tlsutil", "internal/atomicfile"}},
	{pkg: "internal/lifecycle", allowed: []string{}},
	{pkg: "internal/netaddr", allowed: []string{}},
	{pkg: "internal/tlsutil", allowed: []string{"internal/atomicfile"}},
	{pkg: "internal/membership", allowed: []string{"internal/netaddr"}},
	{pkg: "internal/atomicfile", allowed: []string{}},
	{pkg: "internal/embedetcd", allowed: []string{"internal/netaddr", "internal/tlsutil", "internal/atomicfile"}},
	{pkg: "internal/golden", allowed: []string{"model"}},
	{pkg: "internal/deptest", allowed: []string{}},
	{pkg: "internal/modelblobs", allowed: []string{"model", "routing", "expertstore/blob"}},
	{pkg: "internal/placement", allowed: []string{"routing", "model", "expertstore/blob", "internal/tlsutil", "internal/atomicfile"}},
	// Daemons. The control plane never depends on the data plane's consumers, and the reverse: the
	// coordinator and the worker meet in etcd (internal/placement).
	{pkg: "expertstore", exact: true, allowed: []string{"api", "model", "routing", "internal/lifecycle", "expertstore/blob",
		"expertstore/dataplane", "expertstore/client", "internal/membership", "internal/atomicfile", "internal/netaddr", "internal/tlsutil"}},
	{pkg: "coordinator", allowed: []string{"api", "model", "routing", "internal/lifecycle", "expertstore/blob", "expertstore/dataplane",
		"expertstore/client", "internal/placement", "internal/membership", "internal/modelblobs", "internal/embedetcd", "internal/atomicfile", "internal/netaddr", "internal/tlsutil"}},
	{pkg: "worker/serve", allowed: []string{"model", "compute", "routing", "engine", "expertstore/blob", "internal/lifecycle"}},
	{pkg: "worker", exact: true, allowed: []string{"api", "model", "compute", "routing", "engine", "internal/lifecycle", "expertstore/blob",
		"expertstore/dataplane", "expertstore/client", "internal/placement", "internal/membership", "internal/atomicfile", "internal/netaddr", "internal/tlsutil", "worker/serve"}},
	// Assemblies. cluster is the control and storage planes in one process (a worker is added by
	// whoever needs one); bench drives a cluster and workers.
	{pkg: "cluster", forbidden: []string{module + "/worker", module + "/bench", module + "/cmd"}},
	{pkg: "bench", forbidden: []string{module + "/cmd"}},
}

// cudaImporters are the only packages that may import the cuda package, in the cuda build: the
// default build has no cuda package at all (every file is tagged), so nothing else can need it.
var cudaImporters = []string{"cmd/pregate"}

func TestDependencyRules(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		all := deps(t)
		if _, ok := all["cuda"]; ok {
			t.Error("the cuda package is in the default build: every file of it must be tagged cuda")
		}
		checkRules(t, all)
	})
	t.Run("cuda", func(t *testing.T) {
		all := deps(t, "cuda")
		if _, ok := all["cuda"]; !ok {
			t.Fatal("go list -tags cuda does not list the cuda package")
		}
		for rel, ds := range all {
			if rel != "cuda" && slices.Contains(ds, module+"/cuda") && !slices.Contains(cudaImporters, rel) {
				t.Errorf("%s depends on cuda: only %v may (in their cuda-tagged files)", rel, cudaImporters)
			}
		}
		checkRules(t, all)
	})
}

func checkRules(t *testing.T, all map[string][]string) {
	if len(all) < 20 {
		t.Fatalf("go list saw %d packages: is it seeing the module?", len(all))
	}
	for rel, ds := range all {
		covered := false
		for _, r := range rules {
			if !r.covers(rel) {
				continue
			}
			covered = true
			for _, d := range ds {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("%s must not depend on %s", rel, d)
					}
				}
				dep, ours := strings.CutPrefix(d, module+"/")
				if r.allowed == nil || !ours {
					continue
				}
				if !slices.ContainsFunc(r.allowed, func(a string) bool { return dep == a || strings.HasPrefix(dep, a+"/") }) {
					t.Errorf("%s must not depend on %s", rel, dep)
				}
			}
		}
		if !covered && !slices.Contains(assemblies, rel) {
			t.Errorf("%s has no dependency rule: give it one (docs/ARCHITECTURE.md, the package map)", rel)
		}
		for _, d := range ds {
			dep, ours := strings.CutPrefix(d, module+"/")
			// Nothing below the assemblies imports one; no library imports a daemon.
			if ours && slices.Contains(assemblies, dep) && !slices.Contains(assemblies, rel) {
				t.Errorf("%s depends on the assembly %s", rel, dep)
			}
			if ours && slices.Contains(daemons, dep) && !slices.Contains(assemblies, rel) && !isDaemon(rel) {
				t.Errorf("library %s depends on the daemon %s", rel, dep)
			}
			// Only the cuda package may pull in gorgonia.org/cu (its init exits without a driver),
			// and no production package depends on testing (test helpers live in _test files, or
			// take a testing.TB-shaped interface of their own).
			if strings.HasPrefix(d, "gorgonia.org/cu") && !strings.HasPrefix(rel, "cuda") {
				t.Errorf("%s depends on %s", rel, d)
			}
			if d == "testing" {
				t.Errorf("%s depends on testing", rel)
			}
		}
	}
}

func isDaemon(rel string) bool {
	return slices.Contains(daemons, rel) || strings.HasPrefix(rel, "worker/") || strings.HasPrefix(rel, "coordinator/")
}

// TestRulesCatchViolations feeds the checks a made-up graph: they must fail where a rule is broken.
func TestRulesCatchViolations(t *testing.T) {
	violates := func(rel string, dep string) bool {
		for _, r := range rules {
			if !r.covers(rel) {
				continue
			}
			for _, f := range r.forbidden {
				if strings.HasPrefix(dep, f) {
					return true
				}
			}
			d, ours := strings.CutPrefix(dep, module+"/")
			if r.allowed != nil && ours && !slices.ContainsFunc(r.allowed, func(a string) bool { return d == a || strings.HasPrefix(d, a+"/") }) {
				return true
			}
		}
		return false
	}
	for _, tt := range []struct {
		rel, dep string
		want     bool
	}{
		{"worker", module + "/coordinator", true},
		{"coordinator", module + "/worker", true},
		{"routing", "google.golang.org/grpc", true},
		{"engine", module + "/expertstore/client", true},
		{"internal/placement", module + "/coordinator", true},
		{"cluster", module + "/worker", true},
		{"bench", module + "/cmd/pregate", true},
		{"cuda", module + "/worker", true},
		{"worker", module + "/expertstore/client", false},
		{"bench", module + "/worker", false},
		{"routing", module + "/expertstore/blob", false},
	} {
		if got := violates(tt.rel, tt.dep); got != tt.want {
			t.Errorf("%s → %s: violation %v, want %v", tt.rel, tt.dep, got, tt.want)
		}
	}
}
