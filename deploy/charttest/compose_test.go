package charttest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestCompose: deploy/compose.yaml runs the daemons as the chart does: every flag and PREGATE_*
// variable exists in `pregate flags`, and each daemon's flags are the ones the chart passes it.
func TestCompose(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(chartDir), "..", "deploy", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command     []string          `json:"command"`
			Environment map[string]string `json:"environment"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatal(err)
	}
	r := render(t, Options{}, "minimal.yaml")
	chartFlags := map[string][]string{}
	for _, w := range r.Workloads() {
		for _, c := range w.Spec.Containers {
			chartFlags[c.Args[0]] = flagNames(c.Args[1:])
		}
	}
	roles := map[string]int{}
	for name, svc := range compose.Services {
		if len(svc.Command) == 0 {
			t.Errorf("service %s: no command", name)
			continue
		}
		cmd := svc.Command[0]
		roles[cmd]++
		flags, ok := flagSpec[cmd]
		if !ok {
			t.Errorf("service %s: pregate has no subcommand %q", name, cmd)
			continue
		}
		for _, f := range flagNames(svc.Command[1:]) {
			if _, ok := flags[f]; !ok {
				t.Errorf("service %s: pregate %s has no flag --%s", name, cmd, f)
			}
		}
		envs := map[string]bool{}
		for _, env := range flags {
			envs[env] = env != ""
		}
		for env := range svc.Environment {
			if !envs[env] {
				t.Errorf("service %s: pregate %s reads no variable %s", name, cmd, env)
			}
		}
		if want, ok := chartFlags[cmd]; ok && cmd != "import" {
			if got := flagNames(svc.Command[1:]); !slices.Equal(got, want) {
				t.Errorf("service %s runs %s with flags %v; the chart passes %v", name, cmd, got, want)
			}
			for _, env := range []string{"PREGATE_NODE_NAME", "PREGATE_ADVERTISE_HOST"} {
				if svc.Environment[env] != name {
					t.Errorf("service %s: %s=%q, want its service name", name, env, svc.Environment[env])
				}
			}
		}
	}
	want := map[string]int{"coordinator": 1, "store": 3, "worker": 1, "import": 1, "synth": 1}
	if !mapsEqual(roles, want) {
		t.Errorf("compose runs %v, want %v", roles, want)
	}
}

// flagNames returns the sorted names of --name=value arguments.
func flagNames(args []string) []string {
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
