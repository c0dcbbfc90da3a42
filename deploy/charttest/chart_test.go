package charttest

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// valuesFiles are the chart's test values, each rendered, wired-checked and linted.
var valuesFiles = []string{"minimal.yaml", "ha.yaml", "external-etcd.yaml", "cuda.yaml", "everything.yaml"}

func render(t *testing.T, opts Options, files ...string) *Rendered {
	t.Helper()
	var paths []string
	for _, f := range files {
		paths = append(paths, filepath.Join("testdata", f))
	}
	vals, err := ReadValues(paths...)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render(chartDir, vals, opts)
	if err != nil {
		t.Fatalf("render %v: %v", files, err)
	}
	return r
}

func mustContainer(t *testing.T, r *Rendered, kind, name, cname string) corev1.Container {
	t.Helper()
	c, err := container(r, kind, name, cname)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantFlag(t *testing.T, c corev1.Container, name, want string) {
	t.Helper()
	got, ok := flagValue(c.Args, name)
	if !ok {
		t.Errorf("%s: no --%s in %q", c.Name, name, c.Args)
	} else if got != want {
		t.Errorf("%s: --%s=%q, want %q", c.Name, name, got, want)
	}
}

func wantNoFlag(t *testing.T, c corev1.Container, name string) {
	t.Helper()
	if v, ok := flagValue(c.Args, name); ok {
		t.Errorf("%s: unexpected --%s=%q", c.Name, name, v)
	}
}

func wantEnv(t *testing.T, c corev1.Container, name, want string) {
	t.Helper()
	got, ok := envVar(c, name)
	if !ok {
		t.Errorf("%s: no %s", c.Name, name)
	} else if got != want {
		t.Errorf("%s: %s=%q, want %q", c.Name, name, got, want)
	}
}

func kindCounts(r *Rendered) map[string]int {
	n := map[string]int{}
	for _, o := range r.Objects {
		n[o.Kind]++
	}
	return n
}

func TestRender(t *testing.T) {
	const hl = "pregate-coordinator-headless"
	tests := []struct {
		name  string
		files []string
		opts  Options
		check func(t *testing.T, r *Rendered)
	}{
		{
			name: "minimal", files: []string{"minimal.yaml"},
			check: func(t *testing.T, r *Rendered) {
				want := map[string]int{"StatefulSet": 2, "Deployment": 1, "Service": 4, "PodDisruptionBudget": 2, "Pod": 1}
				if got := kindCounts(r); !mapsEqual(got, want) {
					t.Errorf("kinds %v, want %v", got, want)
				}
				coord := mustContainer(t, r, "StatefulSet", "pregate-coordinator", "coordinator")
				wantFlag(t, coord, "data-dir", "/var/lib/pregate")
				wantFlag(t, coord, "replicas", "2")
				wantNoFlag(t, coord, "etcd-initial-cluster")
				wantNoFlag(t, coord, "etcd-endpoints")
				wantNoFlag(t, coord, "join")
				wantNoFlag(t, coord, "gossip-key-file")
				wantEnv(t, coord, "PREGATE_NODE_NAME", "fieldRef:metadata.name")
				wantEnv(t, coord, "PREGATE_ADVERTISE_HOST", "$(POD_NAME)."+hl+".$(POD_NAMESPACE).svc.cluster.local")

				store := mustContainer(t, r, "StatefulSet", "pregate-store", "store")
				wantFlag(t, store, "join", "pregate-coordinator-0."+hl+":7946")
				wantFlag(t, store, "memory-limit", "8Gi")
				wantEnv(t, store, "PREGATE_ADVERTISE_HOST", "fieldRef:status.podIP")
				wantEnv(t, store, "PREGATE_NODE_NAME", "fieldRef:metadata.name")
				if got := store.Resources.Limits.Memory().String(); got != "11776Mi" {
					t.Errorf("store memory limit %s, want 11776Mi (8Gi × 1.25 + 1Gi + 512Mi)", got)
				}
				sts, err := statefulSet(r, "pregate-store")
				if err != nil {
					t.Fatal(err)
				}
				aa := sts.Spec.Template.Spec.Affinity.PodAntiAffinity
				if len(aa.PreferredDuringSchedulingIgnoredDuringExecution) != 1 || len(aa.RequiredDuringSchedulingIgnoredDuringExecution) != 0 ||
					aa.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
					t.Errorf("store anti-affinity %+v, want preferred across hostnames", aa)
				}
				if g := *sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g < 30 {
					t.Errorf("store terminationGracePeriodSeconds %d: too short for a graceful stop", g)
				}
				if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String() != "32Gi" {
					t.Errorf("store PVC %+v, want one of 32Gi", sts.Spec.VolumeClaimTemplates)
				}

				worker := mustContainer(t, r, "Deployment", "pregate-worker", "worker")
				wantFlag(t, worker, "device", "cpu")
				wantFlag(t, worker, "mode", "speculative")
				wantFlag(t, worker, "model", "switch-base-8")
				wantFlag(t, worker, "expert-cache", "4Gi")
				wantFlag(t, worker, "shutdown-timeout", "30s")
				wantEnv(t, worker, "PREGATE_COORDINATOR", "pregate-coordinator-0."+hl+":7080")
				if _, ok := worker.Resources.Limits["nvidia.com/gpu"]; ok {
					t.Error("a CPU worker requests a GPU")
				}
				o, err := r.Find("Deployment", "pregate-worker")
				if err != nil {
					t.Fatal(err)
				}
				if g := *o.(*appsv1.Deployment).Spec.Template.Spec.TerminationGracePeriodSeconds; g != 45 {
					t.Errorf("worker terminationGracePeriodSeconds %d, want --shutdown-timeout + 15 = 45", g)
				}

				for _, want := range []string{"port-forward svc/pregate-worker 8000:8000", "exec pregate-coordinator-0 -- pregate status",
					"pregate drain pregate-store-<n-1>", "scale statefulset/pregate-store"} {
					if !strings.Contains(r.Notes, want) {
						t.Errorf("NOTES.txt does not say %q:\n%s", want, r.Notes)
					}
				}
				status := mustContainer(t, r, "Pod", "pregate-test", "status")
				if status.Args[0] != "status" {
					t.Errorf("test Pod init container runs %q, want status", status.Args)
				}
				wantEnv(t, status, "PREGATE_COORDINATOR", "pregate-coordinator-0."+hl+":7080")
				complete := mustContainer(t, r, "Pod", "pregate-test", "complete")
				wantArgs := []string{"complete", "--url=http://pregate-worker:8000", "--model=switch-base-8", "--prompt-ids=1 2 3", "--max-tokens=4"}
				if !slices.Equal(complete.Args, wantArgs) {
					t.Errorf("helm test runs %q, want %q", complete.Args, wantArgs)
				}
			},
		},
		{
			name: "ha in another namespace and release", files: []string{"ha.yaml"},
			opts: Options{Release: "prod", Namespace: "inference"},
			check: func(t *testing.T, r *Rendered) {
				const hl = "prod-pregate-coordinator-headless"
				sts, err := statefulSet(r, "prod-pregate-coordinator")
				if err != nil {
					t.Fatal(err)
				}
				if *sts.Spec.Replicas != 3 || sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
					t.Errorf("coordinators: %d replicas, %s; want 3, Parallel (a new etcd cluster needs all its members)",
						*sts.Spec.Replicas, sts.Spec.PodManagementPolicy)
				}
				headless, err := r.Find("Service", hl)
				if err != nil {
					t.Fatal(err)
				}
				if !headless.(*corev1.Service).Spec.PublishNotReadyAddresses {
					t.Error("the coordinators' headless Service must publish not-ready addresses (peer discovery)")
				}
				coord := mustContainer(t, r, "StatefulSet", "prod-pregate-coordinator", "coordinator")
				var members, gossip, http []string
				for i := range 3 {
					pod := "prod-pregate-coordinator-" + string(rune('0'+i))
					members = append(members, pod+"=http://"+pod+"."+hl+".inference.svc.cluster.local:2380")
					gossip = append(gossip, pod+"."+hl+":7946")
					http = append(http, pod+"."+hl+":7080")
				}
				wantFlag(t, coord, "etcd-initial-cluster", strings.Join(members, ","))
				wantFlag(t, coord, "join", strings.Join(gossip, ","))
				wantFlag(t, coord, "replicas", "3")
				wantEnv(t, coord, "PREGATE_ADVERTISE_HOST", "$(POD_NAME)."+hl+".$(POD_NAMESPACE).svc.cluster.local")
				store := mustContainer(t, r, "StatefulSet", "prod-pregate-store", "store")
				wantFlag(t, store, "join", strings.Join(gossip, ","))
				wantFlag(t, store, "max-inflight", "2Gi")
				if got := store.Resources.Requests.Memory().String(); got != "84480Mi" {
					t.Errorf("store memory request %s, want 84480Mi (64Gi × 1.25 + 2Gi + 512Mi)", got)
				}
				worker := mustContainer(t, r, "Deployment", "prod-pregate-worker", "worker")
				wantEnv(t, worker, "PREGATE_COORDINATOR", strings.Join(http, ","))
				wantFlag(t, worker, "join", strings.Join(gossip, ","))
				wantFlag(t, worker, "mode", "pregated")
				if _, err := r.Find("PodDisruptionBudget", "prod-pregate-worker"); err != nil {
					t.Errorf("two workers and no PDB: %v", err)
				}
			},
		},
		{
			name: "external etcd", files: []string{"external-etcd.yaml"},
			check: func(t *testing.T, r *Rendered) {
				coord := mustContainer(t, r, "StatefulSet", "pregate-coordinator", "coordinator")
				wantFlag(t, coord, "etcd-endpoints", "http://etcd-0.etcd.infra:2379,http://etcd-1.etcd.infra:2379,http://etcd-2.etcd.infra:2379")
				wantNoFlag(t, coord, "etcd-initial-cluster")
				for _, p := range coord.Ports {
					if p.ContainerPort == 2379 || p.ContainerPort == 2380 {
						t.Errorf("no embedded etcd, yet port %s %d", p.Name, p.ContainerPort)
					}
				}
				o, err := r.Find("Service", "pregate-coordinator")
				if err != nil {
					t.Fatal(err)
				}
				if ports := o.(*corev1.Service).Spec.Ports; len(ports) != 1 || ports[0].Port != 7080 {
					t.Errorf("coordinator Service ports %+v, want only http 7080", ports)
				}
			},
		},
		{
			name: "cuda workers", files: []string{"cuda.yaml"},
			check: func(t *testing.T, r *Rendered) {
				worker := mustContainer(t, r, "Deployment", "pregate-worker", "worker")
				wantFlag(t, worker, "device", "cuda")
				wantFlag(t, worker, "expert-cache", "40Gi")
				wantFlag(t, worker, "model", "mixtral-8x7b")
				wantFlag(t, worker, "shutdown-timeout", "120s")
				if q := worker.Resources.Limits["nvidia.com/gpu"]; q.Value() != 2 {
					t.Errorf("nvidia.com/gpu limit %s, want 2", q.String())
				}
				if q := worker.Resources.Limits[corev1.ResourceMemory]; q.String() != "96Gi" {
					t.Errorf("memory limit %s, want the values' 96Gi kept beside the GPUs", q.String())
				}
				if worker.Image != "pregate:0.1.0-cuda" {
					t.Errorf("image %s", worker.Image)
				}
				o, err := r.Find("Deployment", "pregate-worker")
				if err != nil {
					t.Fatal(err)
				}
				spec := o.(*appsv1.Deployment).Spec.Template.Spec
				if spec.NodeSelector["nvidia.com/gpu.present"] != "true" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "nvidia.com/gpu" {
					t.Errorf("GPU placement: nodeSelector %v, tolerations %+v", spec.NodeSelector, spec.Tolerations)
				}
				if *spec.TerminationGracePeriodSeconds != 135 {
					t.Errorf("terminationGracePeriodSeconds %d, want 135", *spec.TerminationGracePeriodSeconds)
				}
			},
		},
		{
			name: "everything with the monitoring API", files: []string{"everything.yaml"},
			opts:  Options{APIVersions: []string{MonitoringAPI}},
			check: checkEverything,
		},
		{
			name: "everything without the monitoring API", files: []string{"everything.yaml"},
			check: func(t *testing.T, r *Rendered) {
				if n := len(Of[*ServiceMonitor](r)); n != 0 {
					t.Errorf("%d ServiceMonitors where the cluster has no monitoring.coreos.com/v1", n)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := render(t, tt.opts, tt.files...)
			for _, e := range wiringErrors(r) {
				t.Error(e)
			}
			tt.check(t, r)
		})
	}
}

func checkEverything(t *testing.T, r *Rendered) {
	if n := len(Of[*ServiceMonitor](r)); n != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", n)
	}
	if sm := Of[*ServiceMonitor](r)[0]; sm.Labels["release"] != "prometheus" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor labels %v, endpoints %+v", sm.Labels, sm.Spec.Endpoints)
	}
	for _, want := range []string{"https://api.pregate.test/v1/completions", "logs job/pregate-import"} {
		if !strings.Contains(r.Notes, want) {
			t.Errorf("NOTES.txt does not say %q:\n%s", want, r.Notes)
		}
	}
	// Every daemon reads the gossip key from the chart's Secret and has the TLS material mounted.
	secret, err := r.Find("Secret", "pregate-gossip")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(secret.(*corev1.Secret).Data["key"]); got != "c3VwZXItc2VjcmV0LWtleS1vZi0zMi1ieXRlcyEhISE=" {
		t.Errorf("gossip Secret holds %q", got)
	}
	for _, d := range []struct{ kind, name, container string }{
		{"StatefulSet", "pregate-coordinator", "coordinator"}, {"StatefulSet", "pregate-store", "store"}, {"Deployment", "pregate-worker", "worker"},
	} {
		c := mustContainer(t, r, d.kind, d.name, d.container)
		wantFlag(t, c, "gossip-key-file", "/etc/pregate/gossip/key")
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = m.Name
		}
		if mounts["/etc/pregate/gossip"] == "" || mounts["/etc/pregate/tls"] == "" {
			t.Errorf("%s mounts %v, want the gossip key and /etc/pregate/tls", d.name, mounts)
		}
	}
	// Mutual TLS: each pod's "certs" init container issues it a certificate of its role from the
	// CA Secret, which no other container mounts; the pod's containers take that certificate.
	for _, d := range []struct{ kind, name, container, role string }{
		{"StatefulSet", "pregate-coordinator", "coordinator", "coordinator"}, {"StatefulSet", "pregate-store", "store", "store"},
		{"Deployment", "pregate-worker", "worker", "worker"}, {"Job", "pregate-import", "import", "importer"},
		{"Pod", "pregate-test", "status", "admin"},
	} {
		i := slices.IndexFunc(r.Workloads(), func(w Workload) bool { return w.Kind == d.kind && w.Name == d.name })
		if i < 0 {
			t.Fatalf("no %s %s", d.kind, d.name)
		}
		w := r.Workloads()[i]
		if len(w.Spec.InitContainers) == 0 || w.Spec.InitContainers[0].Name != "certs" {
			t.Errorf("%s: no certs init container first", d.name)
			continue
		}
		certs := w.Spec.InitContainers[0]
		wantFlag(t, certs, "role", d.role)
		wantFlag(t, certs, "ca-dir", "/etc/pregate/ca")
		wantFlag(t, certs, "dir", "/etc/pregate/tls")
		for _, c := range slices.Concat(w.Spec.InitContainers, w.Spec.Containers) {
			for _, m := range c.VolumeMounts {
				if m.Name == "tls-ca" && c.Name != "certs" {
					t.Errorf("%s: container %s mounts the CA key", d.name, c.Name)
				}
			}
		}
		c := mustContainer(t, r, d.kind, d.name, d.container)
		wantFlag(t, c, "tls-ca", "/etc/pregate/tls/ca.crt")
		wantFlag(t, c, "tls-cert", "/etc/pregate/tls/node.crt")
		wantFlag(t, c, "tls-key", "/etc/pregate/tls/node.key")
	}
	if c := mustContainer(t, r, "StatefulSet", "pregate-coordinator", "coordinator"); c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Errorf("the coordinator's readiness probe is %s, want HTTPS (it serves HTTPS with TLS)", c.ReadinessProbe.HTTPGet.Scheme)
	}
	// API keys: the worker requires them, and helm test's completion sends one; both from the Secret.
	for _, d := range []struct{ kind, name, container string }{{"Deployment", "pregate-worker", "worker"}, {"Pod", "pregate-test", "complete"}} {
		c := mustContainer(t, r, d.kind, d.name, d.container)
		wantFlag(t, c, "api-key-file", "/etc/pregate/api-keys/keys")
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || m.MountPath == "/etc/pregate/api-keys" && m.Name == "api-keys" && m.ReadOnly
		}
		if !mounted {
			t.Errorf("%s: the API keys are not mounted read-only at /etc/pregate/api-keys: %+v", d.name, c.VolumeMounts)
		}
	}
	sts, err := statefulSet(r, "pregate-store")
	if err != nil {
		t.Fatal(err)
	}
	if aa := sts.Spec.Template.Spec.Affinity.PodAntiAffinity; len(aa.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Errorf("antiAffinity hard: %+v", aa)
	}
	if sc := sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc == nil || *sc != "fast-ssd" {
		t.Errorf("store storageClassName %v", sc)
	}

	// NetworkPolicy: etcd peers only from coordinators; the store's data plane not from outside.
	policies := map[string]*networkingv1.NetworkPolicy{}
	for _, np := range Of[*networkingv1.NetworkPolicy](r) {
		policies[np.Name] = np
	}
	if len(policies) != 3 {
		t.Fatalf("NetworkPolicies %v, want coordinator, store, worker", policies)
	}
	for _, rule := range policies["pregate-coordinator"].Spec.Ingress {
		if hasPort(rule, 2380) {
			if len(rule.From) != 1 || rule.From[0].PodSelector.MatchLabels["app.kubernetes.io/component"] != "coordinator" {
				t.Errorf("etcd peer port open to %+v, want coordinators only", rule.From)
			}
		}
	}
	for _, rule := range policies["pregate-store"].Spec.Ingress {
		if hasPort(rule, 7071) {
			for _, peer := range rule.From {
				if peer.NamespaceSelector != nil {
					t.Errorf("store data plane open to %+v", peer)
				}
			}
		}
		if hasPort(rule, 7072) && (len(rule.From) != 1 || rule.From[0].NamespaceSelector == nil) {
			t.Errorf("store metrics open to %+v, want metricsFrom", rule.From)
		}
	}
	gossipOK := false
	for _, rule := range policies["pregate-worker"].Spec.Ingress {
		gossipOK = gossipOK || hasPort(rule, 7946) && len(rule.From) == 3
	}
	if !gossipOK {
		t.Error("worker gossip not open to the three roles")
	}

	ing, err := r.Find("Ingress", "pregate-worker")
	if err != nil {
		t.Fatal(err)
	}
	if spec := ing.(*networkingv1.Ingress).Spec; *spec.IngressClassName != "nginx" || spec.TLS[0].SecretName != "pregate-api-tls" || spec.Rules[0].Host != "api.pregate.test" {
		t.Errorf("Ingress %+v", spec)
	}

	job, err := r.Find("Job", "pregate-import")
	if err != nil {
		t.Fatal(err)
	}
	imp := mustContainer(t, r, "Job", "pregate-import", "import")
	wantFlag(t, imp, "model", "/models/switch-base-8")
	wantFlag(t, imp, "name", "switch-base-8")
	wantEnv(t, imp, "PREGATE_COORDINATOR", strings.Join([]string{
		"pregate-coordinator-0.pregate-coordinator-headless:7080",
		"pregate-coordinator-1.pregate-coordinator-headless:7080",
		"pregate-coordinator-2.pregate-coordinator-headless:7080"}, ","))
	spec := job.(*batchv1.Job).Spec.Template.Spec
	if v := spec.Volumes[0]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "checkpoints" {
		t.Errorf("import volume %+v, want the PVC checkpoints", v)
	}
	if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "registry" {
		t.Errorf("imagePullSecrets %+v", spec.ImagePullSecrets)
	}
}

func hasPort(rule networkingv1.NetworkPolicyIngressRule, port int32) bool {
	return slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port != nil && p.Port.IntValue() == int(port) })
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestWiringCatchesMistakes breaks a good render in the ways the wiring checks look for, and
// expects each to be reported: the checks above can fail.
func TestWiringCatchesMistakes(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(r *Rendered)
		want    string
	}{
		{"service targets no port", func(r *Rendered) {
			svc := mustFind[*corev1.Service](t, r, "Service", "pregate-worker")
			svc.Spec.Ports[0].TargetPort = intstr.FromString("api")
		}, "targetPort api (TCP) is no container port"},
		{"selector misses the pods", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-store")
			sts.Spec.Selector.MatchLabels["app.kubernetes.io/component"] = "stores"
		}, "does not match its pod labels"},
		{"unknown flag", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-store")
			c := &sts.Spec.Template.Spec.Containers[0]
			c.Args = append(c.Args, "--memory-limt=8Gi")
		}, "pregate store has no flag --memory-limt"},
		{"unknown variable", func(r *Rendered) {
			d := mustFind[*appsv1.Deployment](t, r, "Deployment", "pregate-worker")
			c := &d.Spec.Template.Spec.Containers[0]
			c.Env = append(c.Env, corev1.EnvVar{Name: "PREGATE_EXPERT_CACHE_SIZE", Value: "1Gi"})
		}, "reads no variable PREGATE_EXPERT_CACHE_SIZE"},
		{"variable used before it is defined", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-coordinator")
			c := &sts.Spec.Template.Spec.Containers[0]
			c.Env = slices.Insert(c.Env, 0, corev1.EnvVar{Name: "PREGATE_JOIN", Value: "$(POD_NAME):7946"})
		}, "refers to $(POD_NAME), not defined before it"},
		{"probe on a path the daemon does not serve", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-store")
			sts.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Path = "/healthz"
		}, "readiness probe GET /healthz on port 7072"},
		{"probe on another daemon's port", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-store")
			sts.Spec.Template.Spec.Containers[0].LivenessProbe.HTTPGet.Port = intstr.FromInt32(7070)
		}, "liveness probe GET /health on port 7070"},
		{"PDB selects nothing", func(r *Rendered) {
			pdb := mustFind[*policyv1.PodDisruptionBudget](t, r, "PodDisruptionBudget", "pregate-store")
			pdb.Spec.Selector.MatchLabels["app.kubernetes.io/instance"] = "other"
		}, "PodDisruptionBudget pregate-store selects 0 workloads"},
		{"headless Service missing", func(r *Rendered) {
			sts := mustFind[*appsv1.StatefulSet](t, r, "StatefulSet", "pregate-store")
			sts.Spec.ServiceName = "pregate-stores"
		}, "serviceName pregate-stores is not rendered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := render(t, Options{}, "minimal.yaml")
			if errs := wiringErrors(r); len(errs) != 0 {
				t.Fatalf("the unbroken render has problems: %v", errs)
			}
			tt.breakIt(r)
			errs := wiringErrors(r)
			if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, tt.want) }) {
				t.Errorf("problems %q, want one saying %q", errs, tt.want)
			}
		})
	}
}

func mustFind[T any](t *testing.T, r *Rendered, kind, name string) T {
	t.Helper()
	o, err := r.Find(kind, name)
	if err != nil {
		t.Fatal(err)
	}
	return o.(T)
}

// TestValuesRejected: values.schema.json and the checks in _checks.tpl reject each bad value with
// a message that names it.
func TestValuesRejected(t *testing.T) {
	tests := []struct {
		name string
		give string   // YAML over testdata/minimal.yaml
		want []string // substrings of the error
	}{
		{"unknown mode", "worker: {mode: turbo}", []string{"/worker/mode", "'resident', 'ondemand', 'prefetch-all', 'pregated', 'speculative'"}},
		{"two coordinators", "coordinator: {replicas: 2}", []string{"/coordinator/replicas", "1, 3"}},
		{"five coordinators", "coordinator: {replicas: 5}", []string{"/coordinator/replicas", "1, 3"}},
		{"zero memory limit", "store: {memoryLimit: 0Gi}", []string{"/store/memoryLimit", "'0Gi' does not match pattern"}},
		{"negative memory limit", "store: {memoryLimit: -8Gi}", []string{"/store/memoryLimit", "does not match pattern"}},
		{"a size in decimal units", "worker: {expertCache: 8GB}", []string{"/worker/expertCache", "does not match pattern"}},
		{"no stores", "store: {replicas: 0}", []string{"/store/replicas", "minimum"}},
		{"zero shutdown timeout", "worker: {shutdownTimeoutSeconds: 0}", []string{"/worker/shutdownTimeoutSeconds", "minimum"}},
		{"zero PVC", "coordinator: {persistence: {size: 0Mi}}", []string{"/coordinator/persistence/size", "does not match pattern"}},
		{"misspelt key", "stroe: {replicas: 3}", []string{"additional properties 'stroe' not allowed"}},
		{"misspelt nested key", "worker: {expertcache: 8Gi}", []string{"/worker", "'expertcache' not allowed"}},
		{"unknown device", "worker: {device: rocm}", []string{"/worker/device", "'cpu', 'cuda'"}},
		{"bad log level", "logLevel: verbose", []string{"/logLevel", "'debug', 'info', 'warn', 'error'"}},
		{"etcd endpoint without a scheme", "etcd: {external: {endpoints: [etcd-0:2379]}}", []string{"/etcd/external/endpoints/0", "does not match pattern"}},
		{"fewer stores than the replication factor", "replicationFactor: 4", []string{"store.replicas (3) is below replicationFactor (4)"}},
		{"expert cache below one block", "model: {blockExpertBytes: 6Gi}\nworker: {expertCache: 4Gi}", []string{"worker.expertCache (4Gi) is smaller than one block of experts (model.blockExpertBytes 6Gi)"}},
		{"short gossip key", "gossip: {key: tooshort}", []string{"gossip.key must be 16, 24 or 32 bytes", "it is 8 bytes"}},
		{"gossip key given twice", "gossip: {key: 0123456789abcdef, existingSecret: mine}", []string{"gossip.key and gossip.existingSecret are both set"}},
		{"TLS without its Secret", "tls: {enabled: true}", []string{"tls.enabled needs tls.existingSecret"}},
		{"TLS without the gossip key", "tls: {enabled: true, existingSecret: ca}", []string{"tls.enabled needs the gossip key"}},
		{"import without a PVC", "import: {enabled: true}", []string{"import.enabled needs import.existingClaim"}},
	}
	base, err := ReadValues(filepath.Join("testdata", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			over, err := common.ReadValues([]byte(tt.give))
			if err != nil {
				t.Fatal(err)
			}
			_, err = RenderChart(ch, loader.MergeMaps(base, over), Options{})
			if err == nil {
				t.Fatalf("%s: rendered, want an error", tt.give)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
	t.Run("good gossip keys", func(t *testing.T) {
		for _, key := range []string{"0123456789abcdef", "0123456789abcdef01234567", "c3VwZXItc2VjcmV0LWtleS1vZi0zMi1ieXRlcyEhISE="} {
			over := map[string]any{"gossip": map[string]any{"key": key}}
			if _, err := RenderChart(ch, loader.MergeMaps(base, over), Options{}); err != nil {
				t.Errorf("key %q: %v", key, err)
			}
		}
	})
}

// TestStoreMemory: the store's memory request and limit are memoryLimit × 1.25 + maxInflight + 512Mi.
func TestStoreMemory(t *testing.T) {
	tests := []struct{ memoryLimit, maxInflight, want string }{
		{"8Gi", "1Gi", "11776Mi"},
		{"64Gi", "2Gi", "84480Mi"},
		{"3Gi", "512Mi", "4864Mi"},
		{"1Ti", "4Gi", "1315328Mi"},
		{"1Ki", "1Ki", "513Mi"}, // rounded up to Mi
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		vals := map[string]any{"store": map[string]any{"memoryLimit": tt.memoryLimit, "maxInflight": tt.maxInflight}}
		r, err := RenderChart(ch, vals, Options{})
		if err != nil {
			t.Fatal(err)
		}
		c := mustContainer(t, r, "StatefulSet", "pregate-store", "store")
		if req, lim := c.Resources.Requests.Memory().String(), c.Resources.Limits.Memory().String(); req != tt.want || lim != tt.want {
			t.Errorf("memoryLimit %s, maxInflight %s: request %s, limit %s, want %s", tt.memoryLimit, tt.maxInflight, req, lim, tt.want)
		}
		if cpu := c.Resources.Requests.Cpu().String(); cpu != "500m" {
			t.Errorf("cpu request %s, want the values' 500m kept", cpu)
		}
	}
}

// strictLint runs the SDK's lint action as `helm lint --strict --namespace pregate` with vals.
func strictLint(vals map[string]any) *action.LintResult {
	lint := action.NewLint()
	lint.Strict = true
	lint.Namespace = "pregate"
	return lint.Run([]string{chartDir}, vals)
}

// TestLint runs `helm lint --strict` (the SDK's lint action) on the chart with every values file:
// no error, no warning. A bad value must fail it, so the lint is not vacuous.
func TestLint(t *testing.T) {
	for _, f := range valuesFiles {
		t.Run(f, func(t *testing.T) {
			vals, err := ReadValues(filepath.Join("testdata", f))
			if err != nil {
				t.Fatal(err)
			}
			res := strictLint(vals)
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m.Error())
				}
			}
			for _, err := range res.Errors {
				t.Errorf("lint: %v", err)
			}
			if res.TotalChartsLinted != 1 {
				t.Errorf("linted %d charts", res.TotalChartsLinted)
			}
		})
	}
	t.Run("bad values fail", func(t *testing.T) {
		res := strictLint(map[string]any{"worker": map[string]any{"mode": "turbo"}})
		if len(res.Errors) == 0 || !strings.Contains(res.Errors[0].Error(), "/worker/mode") {
			t.Errorf("lint errors %v, want the schema's /worker/mode", res.Errors)
		}
	})
}

// TestSummary: what cmd/render prints for the other suite's harness.
func TestSummary(t *testing.T) {
	s := Summarize(render(t, Options{}, "minimal.yaml"))
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Summary
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	var store *WorkloadSummary
	for i, w := range back.Workloads {
		if w.Kind == "StatefulSet" && w.Name == "pregate-store" {
			store = &back.Workloads[i]
		}
	}
	if store == nil || *store.Replicas != 3 || store.ServiceName != "pregate-store" || len(store.Containers) != 1 {
		t.Fatalf("store workload %+v", store)
	}
	c := store.Containers[0]
	if c.Args[0] != "store" || !slices.Contains(c.Env, EnvSummary{Name: "PREGATE_ADVERTISE_HOST", FieldRef: "status.podIP"}) ||
		!slices.Contains(c.Ports, PortSummary{Name: "gossip-udp", Port: 7946, Protocol: "UDP"}) ||
		!slices.Contains(c.Mounts, MountSummary{Path: "/var/lib/pregate", Source: "pvc:data"}) {
		t.Errorf("store container %+v", c)
	}
	var test *WorkloadSummary
	for i, w := range back.Workloads {
		if w.Kind == "Pod" {
			test = &back.Workloads[i]
		}
	}
	if test == nil || test.Hook != "test" || !test.Containers[0].Init || test.Containers[1].Args[0] != "complete" {
		t.Errorf("test Pod %+v", test)
	}
	svcs := map[string]ServiceSummary{}
	for _, s := range back.Services {
		svcs[s.Name] = s
	}
	if hl := svcs["pregate-coordinator-headless"]; !hl.Headless || hl.Selector["app.kubernetes.io/component"] != "coordinator" {
		t.Errorf("headless coordinator Service %+v", hl)
	}
	if api := svcs["pregate-worker"]; api.Headless || len(api.Ports) != 1 || api.Ports[0] != (ServicePortSummary{Name: "http", Port: 8000, TargetPort: "http", Protocol: "TCP"}) {
		t.Errorf("worker Service %+v", api)
	}
}
