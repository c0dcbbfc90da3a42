package charttest

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// served is what each daemon serves on its HTTP port (README, "Across hosts"): probes must hit these.
var served = map[string]map[int32][]string{
	"coordinator": {7080: {"/health", "/ready", "/metrics", "/v1/cluster", "/v1/status"}},
	"store":       {7072: {"/health", "/ready", "/metrics"}},
	"worker":      {8000: {"/health", "/ready", "/metrics", "/v1/completions", "/v1/chat/completions", "/v1/models"}},
}

// daemons are the subcommands that run as long-lived pods, with the probes they must have.
var daemons = []string{"coordinator", "store", "worker"}

// wiringErrors checks everything that must hold for any values: selectors, Services, probes, flags
// and variables against `pregate flags`, $(VAR) references, PDBs, NetworkPolicies, Ingress,
// ServiceMonitor and Secrets. It returns one line per problem.
func wiringErrors(r *Rendered) []string {
	var errs []string
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	workloads := r.Workloads()
	services := Of[*corev1.Service](r)

	for _, w := range workloads {
		if (w.Kind == "StatefulSet" || w.Kind == "Deployment") && !Selects(w.Selector, w.Labels) {
			add("%s %s: selector %v does not match its pod labels %v", w.Kind, w.Name, w.Selector, w.Labels)
		}
		if w.ServiceName != "" {
			svc := findService(services, w.ServiceName)
			switch {
			case svc == nil:
				add("StatefulSet %s: serviceName %s is not rendered", w.Name, w.ServiceName)
			case svc.Spec.ClusterIP != corev1.ClusterIPNone:
				add("StatefulSet %s: serviceName %s is not headless", w.Name, w.ServiceName)
			case !Selects(svc.Spec.Selector, w.Labels):
				add("StatefulSet %s: its Service %s does not select its pods", w.Name, w.ServiceName)
			}
		}
		if sc := w.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			add("%s %s: pods must run as non-root", w.Kind, w.Name)
		}
		errs = append(errs, containerErrors(w)...)
		errs = append(errs, volumeErrors(r, w)...)
	}

	for _, svc := range services {
		var selected []Workload
		for _, w := range workloads {
			if Selects(svc.Spec.Selector, w.Labels) {
				selected = append(selected, w)
			}
		}
		if len(selected) == 0 {
			add("Service %s: its selector %v selects no pods", svc.Name, svc.Spec.Selector)
		}
		for _, w := range selected {
			for _, p := range svc.Spec.Ports {
				if _, ok := containerPort(w.Spec, p.TargetPort, p.Protocol); !ok {
					add("Service %s port %s: targetPort %s (%s) is no container port of %s %s",
						svc.Name, p.Name, p.TargetPort.String(), protocol(p.Protocol), w.Kind, w.Name)
				}
			}
		}
	}

	for _, pdb := range Of[*policyv1.PodDisruptionBudget](r) {
		n := 0
		for _, w := range workloads {
			if w.Replicas != nil && Selects(pdb.Spec.Selector.MatchLabels, w.Labels) {
				n++
			}
		}
		if n != 1 {
			add("PodDisruptionBudget %s selects %d workloads, want 1", pdb.Name, n)
		}
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			add("PodDisruptionBudget %s: maxUnavailable %v, want 1", pdb.Name, pdb.Spec.MaxUnavailable)
		}
	}

	for _, np := range Of[*networkingv1.NetworkPolicy](r) {
		var target *Workload
		for i, w := range workloads {
			if Selects(np.Spec.PodSelector.MatchLabels, w.Labels) {
				target = &workloads[i]
			}
		}
		if target == nil {
			add("NetworkPolicy %s selects no pods", np.Name)
			continue
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				proto := corev1.ProtocolTCP
				if p.Protocol != nil {
					proto = *p.Protocol
				}
				if p.Port == nil {
					add("NetworkPolicy %s: a rule without a port", np.Name)
				} else if _, ok := containerPort(target.Spec, *p.Port, proto); !ok {
					add("NetworkPolicy %s: port %s/%s is not served by %s", np.Name, p.Port.String(), proto, target.Name)
				}
			}
			for _, peer := range rule.From {
				if peer.PodSelector == nil || peer.NamespaceSelector != nil {
					continue // peers outside the release (values) are the user's
				}
				found := false
				for _, w := range workloads {
					found = found || Selects(peer.PodSelector.MatchLabels, w.Labels)
				}
				if !found && peer.PodSelector.MatchLabels["pregate.io/client"] != "true" {
					add("NetworkPolicy %s: peer %v selects no pods of the release", np.Name, peer.PodSelector.MatchLabels)
				}
			}
		}
	}

	for _, ing := range Of[*networkingv1.Ingress](r) {
		for _, rule := range ing.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				b := p.Backend.Service
				svc := findService(services, b.Name)
				if svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool {
					return sp.Name == b.Port.Name && b.Port.Name != "" || sp.Port == b.Port.Number && b.Port.Number != 0
				}) {
					add("Ingress %s: backend %s port %v is not a rendered Service port", ing.Name, b.Name, b.Port)
				}
			}
		}
	}

	for _, sm := range Of[*ServiceMonitor](r) {
		n := 0
		for _, svc := range services {
			if !Selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
				continue
			}
			n++
			for _, e := range sm.Spec.Endpoints {
				if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
					add("ServiceMonitor %s: Service %s has no port %q", sm.Name, svc.Name, e.Port)
				}
			}
		}
		if n != 3 {
			add("ServiceMonitor %s selects %d Services, want 3 (coordinator, store, worker)", sm.Name, n)
		}
	}
	return errs
}

// containerErrors checks one workload's containers: the command, the subcommand and every flag and
// PREGATE_* variable against `pregate flags`, $(VAR) references, and a daemon's ports and probes.
func containerErrors(w Workload) []string {
	var errs []string
	add := func(c corev1.Container, format string, a ...any) {
		errs = append(errs, fmt.Sprintf("%s %s, container %s: ", w.Kind, w.Name, c.Name)+fmt.Sprintf(format, a...))
	}
	for _, c := range slices.Concat(w.Spec.InitContainers, w.Spec.Containers) {
		if !slices.Equal(c.Command, []string{"/usr/local/bin/pregate"}) {
			add(c, "command %q, want the image's pregate", c.Command)
			continue
		}
		if len(c.Args) == 0 {
			add(c, "no subcommand")
			continue
		}
		cmd, args := c.Args[0], c.Args[1:]
		if len(c.Args) > 1 && !strings.HasPrefix(c.Args[1], "-") { // a command of a group: certs issue
			cmd, args = c.Args[0]+" "+c.Args[1], c.Args[2:]
		}
		flags, ok := flagSpec[cmd]
		if !ok {
			add(c, "pregate has no subcommand %q", cmd)
			continue
		}
		for _, a := range args {
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !strings.HasPrefix(a, "--") {
				add(c, "argument %q is not a --flag=value", a)
			} else if _, ok := flags[name]; !ok {
				add(c, "pregate %s has no flag --%s", cmd, name)
			}
		}
		envs := map[string]bool{}
		for _, f := range flags {
			envs[f] = f != ""
		}
		defined := map[string]bool{}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "PREGATE_") && !envs[e.Name] {
				add(c, "pregate %s reads no variable %s", cmd, e.Name)
			}
			for _, ref := range varRefs(e.Value) {
				if !defined[ref] {
					add(c, "%s refers to $(%s), not defined before it", e.Name, ref)
				}
			}
			defined[e.Name] = true
		}
		for _, a := range c.Args {
			for _, ref := range varRefs(a) {
				if !defined[ref] {
					add(c, "argument %q refers to $(%s), not defined", a, ref)
				}
			}
		}
		if slices.Contains(daemons, cmd) {
			errs = append(errs, probeErrors(w, c, cmd)...)
		}
	}
	return errs
}

// probeErrors checks that a daemon has startup and liveness probes on /health and a readiness probe
// on /ready, each on a port of the container that serves that path.
func probeErrors(w Workload, c corev1.Container, cmd string) []string {
	var errs []string
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/health"}, {"liveness", c.LivenessProbe, "/health"}, {"readiness", c.ReadinessProbe, "/ready"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			errs = append(errs, fmt.Sprintf("%s %s: %s has no HTTP %s probe", w.Kind, w.Name, c.Name, p.kind))
			continue
		}
		port, ok := containerPort(&corev1.PodSpec{Containers: []corev1.Container{c}}, p.probe.HTTPGet.Port, corev1.ProtocolTCP)
		if !ok {
			errs = append(errs, fmt.Sprintf("%s %s: %s probe's port %s is not a container port", w.Kind, w.Name, p.kind, p.probe.HTTPGet.Port.String()))
			continue
		}
		paths := served[cmd][port]
		if !slices.Contains(paths, p.probe.HTTPGet.Path) || p.probe.HTTPGet.Path != p.path {
			errs = append(errs, fmt.Sprintf("%s %s: %s probe GET %s on port %d; pregate %s serves %v there, want %s",
				w.Kind, w.Name, p.kind, p.probe.HTTPGet.Path, port, cmd, paths, p.path))
		}
	}
	return errs
}

// volumeErrors checks that every mount names a volume (or claim template) and that every Secret
// volume is rendered by the chart or named in the values as existing.
func volumeErrors(r *Rendered, w Workload) []string {
	var errs []string
	vols := map[string]corev1.Volume{}
	for _, v := range w.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, c := range slices.Concat(w.Spec.InitContainers, w.Spec.Containers) {
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok && !slices.Contains(w.ClaimTemplates, m.Name) {
				errs = append(errs, fmt.Sprintf("%s %s: %s mounts %s, which is no volume", w.Kind, w.Name, c.Name, m.Name))
			}
		}
	}
	for _, v := range vols {
		if v.Secret == nil {
			continue
		}
		if _, err := r.Find("Secret", v.Secret.SecretName); err != nil && !slices.Contains(externalSecrets, v.Secret.SecretName) {
			errs = append(errs, fmt.Sprintf("%s %s: volume %s names Secret %s, neither rendered nor an existing one in the values",
				w.Kind, w.Name, v.Name, v.Secret.SecretName))
		}
	}
	return errs
}

// externalSecrets are the Secrets the test values name as existing (tls.existingSecret,
// worker.apiKeys.existingSecret, …).
var externalSecrets = []string{"pregate-tls", "pregate-gossip-existing", "pregate-api-keys"}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func varRefs(s string) []string {
	var out []string
	for _, m := range varRef.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

func findService(services []*corev1.Service, name string) *corev1.Service {
	for _, s := range services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// containerPort resolves a port (a name or a number) among the pod's container ports of that
// protocol, and returns its number.
func containerPort(spec *corev1.PodSpec, port intstr.IntOrString, proto corev1.Protocol) (int32, bool) {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if protocol(p.Protocol) != string(proto) {
				continue
			}
			if port.Type == intstr.String && p.Name == port.StrVal || port.Type == intstr.Int && p.ContainerPort == port.IntVal {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

// container returns the named container of a workload (init containers included).
func container(r *Rendered, kind, name, cname string) (corev1.Container, error) {
	for _, w := range r.Workloads() {
		if w.Kind != kind || w.Name != name {
			continue
		}
		for _, c := range slices.Concat(w.Spec.InitContainers, w.Spec.Containers) {
			if c.Name == cname {
				return c, nil
			}
		}
	}
	return corev1.Container{}, fmt.Errorf("no container %s in %s %s", cname, kind, name)
}

// flagValue returns the value of --name=value in args.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name {
			return "", true
		}
	}
	return "", false
}

// envVar returns a container's variable: its value, or its fieldRef path.
func envVar(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return "fieldRef:" + e.ValueFrom.FieldRef.FieldPath, true
		}
		return e.Value, true
	}
	return "", false
}

func statefulSet(r *Rendered, name string) (*appsv1.StatefulSet, error) {
	o, err := r.Find("StatefulSet", name)
	if err != nil {
		return nil, err
	}
	return o.(*appsv1.StatefulSet), nil
}
