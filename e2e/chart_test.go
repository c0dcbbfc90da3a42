//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The chart mode runs the Helm chart's own configuration: helm/pregate rendered (by
// deploy/charttest's render tool, Helm's SDK) with e2e/testdata/chart-values.yaml, every pod's
// main container started as a process in a namespace of its own, the way a kubelet would: its
// command and arguments as rendered, its environment with $(VAR) references expanded and fieldRefs
// filled in (the pod's name, namespace and IP), each volume a directory of its node, and the
// cluster DNS names the pods use (StatefulSet pods under their headless Service, Services by name)
// in /etc/netns/<ns>/hosts. The scenarios then run on it.

const (
	chartRelease   = "pregate"
	chartNamespace = "pregate"
)

type chartSummary struct {
	Workloads []chartWorkload `json:"workloads"`
	Services  []chartService  `json:"services"`
}

type chartWorkload struct {
	Kind        string            `json:"kind"`
	Name        string            `json:"name"`
	Replicas    *int32            `json:"replicas"`
	ServiceName string            `json:"serviceName"`
	Hook        string            `json:"hook"`
	Labels      map[string]string `json:"labels"`
	Containers  []chartContainer  `json:"containers"`
}

type chartContainer struct {
	Name    string       `json:"name"`
	Init    bool         `json:"init"`
	Command []string     `json:"command"`
	Args    []string     `json:"args"`
	Env     []chartEnv   `json:"env"`
	Mounts  []chartMount `json:"mounts"`
}

type chartEnv struct {
	Name            string `json:"name"`
	Value           string `json:"value"`
	FieldRef        string `json:"fieldRef"`
	SecretKeyRef    string `json:"secretKeyRef"`
	ConfigMapKeyRef string `json:"configMapKeyRef"`
}

type chartMount struct {
	Path   string `json:"path"`
	Source string `json:"source"`
}

type chartService struct {
	Name     string            `json:"name"`
	Headless bool              `json:"headless"`
	Selector map[string]string `json:"selector"`
}

// renderChart renders the chart with values through deploy/charttest's render tool.
func renderChart(t testing.TB, values ...string) chartSummary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // a cold module cache builds Helm
	defer cancel()
	args := []string{"run", "./cmd/render", "--namespace", chartNamespace, "--release", chartRelease}
	for _, v := range values {
		args = append(args, "-f", v)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Join(repoRoot, "deploy", "charttest")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("e2e: render the chart: %v\n%s", err, stderr)
	}
	var s chartSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("e2e: render output: %v", err)
	}
	return s
}

func (s chartSummary) workload(kind, component string) chartWorkload {
	for _, w := range s.Workloads {
		if w.Kind == kind && w.Labels["app.kubernetes.io/component"] == component {
			return w
		}
	}
	return chartWorkload{}
}

// main is the workload's first regular container.
func (w chartWorkload) main() chartContainer {
	for _, c := range w.Containers {
		if !c.Init {
			return c
		}
	}
	return chartContainer{}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// chartDaemon is container c of pod as a kubelet would run it on nd: variables expanded,
// fieldRefs filled in, every mount mapped to a directory of nd (or to claims[claim] for a claim the
// test provides; secrets, Secret name → file → bytes, written into the directories of the mounts
// they back, as kubelet would project them), the binary at the image's path replaced by the built
// one.
func chartDaemon(t testing.TB, role string, c chartContainer, pod string, nd *Node, claims map[string]string, secrets map[string]map[string][]byte) Daemon {
	t.Helper()
	vars := map[string]string{}
	expand := func(s string) string {
		return varRef.ReplaceAllStringFunc(s, func(m string) string {
			if v, ok := vars[m[2:len(m)-1]]; ok {
				return v
			}
			return m // Kubernetes leaves an unknown reference as it is
		})
	}
	mounts := map[string]string{}
	for _, m := range c.Mounts {
		local := filepath.Join(nd.Dir, "volumes", strings.TrimPrefix(m.Path, "/"))
		if claim, ok := strings.CutPrefix(m.Source, "pvc:"); ok && claims[claim] != "" {
			local = claims[claim]
		}
		if name, ok := strings.CutPrefix(m.Source, "secret:"); ok && secrets[name] != nil {
			if err := os.MkdirAll(local, 0o700); err != nil {
				t.Fatal(err)
			}
			for file, b := range secrets[name] {
				if err := os.WriteFile(filepath.Join(local, file), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		mounts[m.Path] = local
	}
	remap := func(s string) string {
		for _, path := range slices.Sorted(maps.Keys(mounts)) {
			if s == path || strings.HasPrefix(s, path+"/") {
				return mounts[path] + strings.TrimPrefix(s, path)
			}
			if k, v, ok := strings.Cut(s, "="); ok && strings.HasPrefix(k, "--") && (v == path || strings.HasPrefix(v, path+"/")) {
				return k + "=" + mounts[path] + strings.TrimPrefix(v, path)
			}
		}
		return s
	}
	var env []string
	for _, e := range c.Env {
		v := expand(e.Value)
		switch e.FieldRef {
		case "":
		case "metadata.name":
			v = pod
		case "metadata.namespace":
			v = chartNamespace
		case "status.podIP":
			v = nd.IP
		default:
			t.Fatalf("e2e: %s: env %s from field %q: not simulated", pod, e.Name, e.FieldRef)
		}
		if e.SecretKeyRef != "" || e.ConfigMapKeyRef != "" {
			t.Fatalf("e2e: %s: env %s from a Secret or ConfigMap: not simulated", pod, e.Name)
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+remap(v))
	}
	if len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/pregate" {
		t.Fatalf("e2e: %s runs %v, not the image's pregate", pod, c.Command)
	}
	var args []string
	for _, a := range c.Args {
		args = append(args, remap(expand(a)))
	}
	d := Daemon{Role: role, Args: args, Env: env}
	switch args[0] { // the daemons' readiness probes
	case "coordinator":
		d.ReadyURL = CoordinatorURL(nd.IP) + "/ready"
		if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--tls-cert=") }) {
			d.ReadyURL = strings.Replace(d.ReadyURL, "http://", "https://", 1) // an HTTPS probe
		}
	case "store":
		d.ReadyURL = StoreURL(nd.IP) + "/ready"
	case "worker":
		d.ReadyURL = WorkerURL(nd.IP) + "/ready"
	}
	return d
}

// chartCluster is the rendered chart running: its coordinators, stores and a worker, as a
// Cluster the scenarios take.
type chartCluster struct {
	*Cluster
	Worker  *Node
	summary chartSummary
	pods    map[string]string            // pod name → the workload's component
	extra   []*Node                      // nodes of pods added by a scale-out
	secrets map[string]map[string][]byte // the Secrets the pods mount (with TLS: the CA, the gossip key)
}

// hostsFile maps the names the pods use to their nodes, as the cluster DNS would: every
// StatefulSet pod under its headless Service, and every Service to the pods it selects.
func (cc *chartCluster) hostsFile() string {
	var b strings.Builder
	b.WriteString("127.0.0.1 localhost\n")
	suffixes := func(name string) []string {
		return []string{name, name + "." + chartNamespace, name + "." + chartNamespace + ".svc",
			name + "." + chartNamespace + ".svc.cluster.local"}
	}
	nodes := map[string]*Node{}
	for _, nd := range cc.allNodes() {
		nodes[nd.Name] = nd
	}
	for _, w := range cc.summary.Workloads {
		if w.Kind != "StatefulSet" {
			continue
		}
		for name, nd := range nodes {
			if strings.HasPrefix(name, w.Name+"-") && cc.pods[name] == w.Labels["app.kubernetes.io/component"] {
				fmt.Fprintf(&b, "%s %s\n", nd.IP, strings.Join(suffixes(name+"."+w.ServiceName), " "))
			}
		}
	}
	for _, svc := range cc.summary.Services {
		for _, w := range cc.summary.Workloads {
			if len(svc.Selector) == 0 || !selects(svc.Selector, w.Labels) {
				continue
			}
			for name, nd := range nodes {
				if cc.pods[name] == w.Labels["app.kubernetes.io/component"] {
					fmt.Fprintf(&b, "%s %s\n", nd.IP, strings.Join(suffixes(svc.Name), " "))
				}
			}
		}
	}
	return b.String()
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (cc *chartCluster) allNodes() []*Node {
	out := append(slices.Clone(cc.Coords), cc.Stores...)
	if cc.Worker != nil {
		out = append(out, cc.Worker)
	}
	return append(append(out, cc.Client), cc.extra...)
}

// writeHosts gives every node the current hosts file (after pods come and go).
func (cc *chartCluster) writeHosts(t testing.TB) {
	t.Helper()
	hosts := cc.hostsFile()
	for _, nd := range cc.allNodes() {
		if err := nd.SetHosts(hosts); err != nil {
			t.Fatal(err)
		}
	}
}

// startChartCluster renders the chart and starts its pods: coordinators, then stores, then the
// import Job (its model claim mapped to testdata/), then the worker.
func startChartCluster(t *testing.T) *chartCluster {
	t.Helper()
	start := time.Now()
	values := []string{filepath.Join(repoRoot, "e2e", "testdata", "chart-values.yaml")}
	var (
		pki     *clusterPKI
		secrets map[string]map[string][]byte
	)
	if clusterTLS { // the chart with TLS: a CA Secret and a gossip key, as docs/DEPLOY.md says
		pki = newClusterPKI(t, t.TempDir())
		key, err := os.ReadFile(pki.gossipKey)
		if err != nil {
			t.Fatal(err)
		}
		caCert, caKey := pki.ca.CA()
		secrets = map[string]map[string][]byte{chartRelease + "-gossip": {"key": bytes.TrimSpace(key)},
			"pregate-ca": {"ca.crt": caCert, "ca.key": caKey}}
		overlay := filepath.Join(t.TempDir(), "tls.yaml")
		text := fmt.Sprintf("tls: {enabled: true, existingSecret: pregate-ca}\ngossip: {key: %q}\n", bytes.TrimSpace(key))
		if err := os.WriteFile(overlay, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		values = append(values, overlay)
	}
	s := renderChart(t, values...)
	coord, store := s.workload("StatefulSet", "coordinator"), s.workload("StatefulSet", "store")
	worker := s.workload("Deployment", "worker")
	imp := s.workload("Job", "import")
	test := s.workload("Pod", "test")
	for what, w := range map[string]chartWorkload{"coordinator StatefulSet": coord, "store StatefulSet": store,
		"worker Deployment": worker, "import Job": imp, "test Pod": test} {
		if w.Name == "" {
			t.Fatalf("e2e: the rendered chart has no %s", what)
		}
	}
	net := NewNetwork(t)
	cc := &chartCluster{Cluster: &Cluster{Net: net, Client: net.Node("client"), pki: pki, t: t}, summary: s,
		pods: map[string]string{}, secrets: secrets}
	cc.pods["client"] = "client"
	for i := range int(*coord.Replicas) {
		name := fmt.Sprintf("%s-%d", coord.Name, i)
		cc.Coords = append(cc.Coords, net.Node(name))
		cc.pods[name] = "coordinator"
	}
	for i := range int(*store.Replicas) {
		name := fmt.Sprintf("%s-%d", store.Name, i)
		cc.Stores = append(cc.Stores, net.Node(name))
		cc.pods[name] = "store"
	}
	cc.Worker = net.Node(worker.Name + "-0")
	cc.pods[cc.Worker.Name] = "worker"
	cc.writeHosts(t)
	cc.storeDaemon = func(nd *Node) Daemon {
		if _, ok := cc.pods[nd.Name]; !ok { // a pod added by a scale-out
			cc.pods[nd.Name] = "store"
			cc.extra = append(cc.extra, nd)
			cc.writeHosts(t)
		}
		return cc.pod(t, "store", store, nd.Name, nd, nil)
	}

	for _, nd := range cc.Coords {
		cc.CoordProcs = append(cc.CoordProcs, nd.Start(t, cc.pod(t, "coordinator", coord, nd.Name, nd, nil)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range cc.CoordProcs {
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range cc.Stores {
		cc.StoreProcs = append(cc.StoreProcs, nd.Start(t, cc.storeDaemon(nd)))
	}
	for _, p := range cc.StoreProcs {
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cc.WaitStatus(t, 30*time.Second, "every store alive", func(s ClusterStatus) bool {
		return s.Summary.Leader != "" && s.Summary.StoresAlive == len(cc.Stores)
	})
	claims := map[string]string{"models": filepath.Join(repoRoot, "testdata")}
	if out, err := cc.Client.Run(ctx, cc.pod(t, "import", imp, imp.Name, cc.Client, claims)); err != nil {
		t.Fatalf("e2e: the chart's import Job: %v\n%s", err, out)
	}
	cc.Worker.StartReady(t, cc.pod(t, "worker", worker, cc.Worker.Name, cc.Worker, nil), 60*time.Second)
	t.Logf("e2e: the chart's cluster up (%d coordinators, %d stores, a worker; TLS %v), model imported, in %v",
		len(cc.Coords), len(cc.Stores), pki != nil, time.Since(start).Round(time.Millisecond))
	return cc
}

// pod runs w's init containers on nd to their end (the "certs" one issues the pod's certificate)
// and returns its main container as a daemon, as kubelet would start the pod named pod.
func (cc *chartCluster) pod(t testing.TB, role string, w chartWorkload, pod string, nd *Node, claims map[string]string) Daemon {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range w.Containers {
		if c.Init {
			if out, err := nd.Run(ctx, chartDaemon(t, role+"-"+c.Name, c, pod, nd, claims, cc.secrets)); err != nil {
				t.Fatalf("e2e: %s's init container %s: %v\n%s", pod, c.Name, err, out)
			}
		}
	}
	return chartDaemon(t, role, w.main(), pod, nd, claims, cc.secrets)
}

// helmTest runs the chart's `helm test` Pod's containers (status, then one completion) on the
// client node, as `helm test` would.
func (cc *chartCluster) helmTest(t *testing.T) error {
	test := cc.summary.workload("Pod", "test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range test.Containers {
		if _, err := cc.Client.Run(ctx, chartDaemon(t, "helm-test-"+c.Name, c, test.Name, cc.Client, nil, cc.secrets)); err != nil {
			return fmt.Errorf("helm test container %s: %w", c.Name, err)
		}
	}
	return nil
}

// TestChartCluster runs scenarios a, b, e and f on the cluster the Helm chart configures, and the
// chart's own `helm test` before and after.
func TestChartCluster(t *testing.T) {
	cc := startChartCluster(t)
	if err := cc.helmTest(t); err != nil {
		t.Fatal(err)
	}
	c, w := cc.Cluster, cc.Worker

	t.Run("golden", func(t *testing.T) {
		row := Record(t, "chart a. golden fixture over HTTP (mixtral-tiny, speculative)")
		prompts, want := goldenPrompts(t, "mixtral-tiny")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := Complete(ctx, WorkerURL(w.IP), Completion{Model: "mixtral-tiny", Prompt: prompts, MaxTokens: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d choices for %d prompts", len(got), len(want))
		}
		mismatches := 0
		for i, ch := range got {
			if !slices.Equal(ch.TokenIDs, want[i]) || ch.FinishReason != "length" {
				mismatches++
				t.Errorf("prompt %d: %v (finish %q), golden %v", i, ch.TokenIDs, ch.FinishReason, want[i])
			}
		}
		row.Set("prompts", "%d", len(prompts))
		row.Set("mismatches", "%d", mismatches)
	})
	t.Run("kill store", func(t *testing.T) {
		killStoreDuringStreams(t, Record(t, "chart b. SIGKILL a store during 32 streams"), c, w)
		c.RestartStore(t, 0) // the StatefulSet brings it back
		c.WaitStatus(t, 60*time.Second, "every store alive again", func(s ClusterStatus) bool {
			return s.Summary.StoresAlive == len(c.Stores) && s.Converged()
		})
	})
	t.Run("rolling restart", func(t *testing.T) {
		rollingRestart(t, Record(t, "chart e. rolling restart of every store"), c, w)
	})
	t.Run("scale", func(t *testing.T) {
		store := cc.summary.workload("StatefulSet", "store")
		scaleOutAndDrain(t, Record(t, "chart f. scale stores 3→5, drain 5→3"), c, w,
			[]string{store.Name + "-3", store.Name + "-4"})
	})
	if err := cc.helmTest(t); err != nil {
		t.Error(err)
	}
}
