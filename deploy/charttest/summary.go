package charttest

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
)

// Summary is what cmd/render prints: what every pod runs and how Services route to it, enough to
// start the rendered chart as processes (one network namespace per pod).
type Summary struct {
	Workloads []WorkloadSummary `json:"workloads"`
	Services  []ServiceSummary  `json:"services"`
}

// WorkloadSummary is one StatefulSet, Deployment, Job or Pod.
type WorkloadSummary struct {
	Kind        string             `json:"kind"`
	Name        string             `json:"name"`
	Replicas    *int32             `json:"replicas,omitempty"`
	ServiceName string             `json:"serviceName,omitempty"`
	Hook        string             `json:"hook,omitempty"`
	Labels      map[string]string  `json:"labels"`
	Containers  []ContainerSummary `json:"containers"`
}

// ContainerSummary is one container (init containers first, marked init).
type ContainerSummary struct {
	Name    string         `json:"name"`
	Init    bool           `json:"init,omitempty"`
	Command []string       `json:"command"`
	Args    []string       `json:"args"`
	Env     []EnvSummary   `json:"env"`
	Ports   []PortSummary  `json:"ports"`
	Mounts  []MountSummary `json:"mounts"`
}

// EnvSummary is one variable: its value, or where it comes from (fieldRef: a field path such as
// status.podIP; secretKeyRef/configMapKeyRef: "name/key"). Values may hold $(VAR) references to
// variables earlier in the list, which Kubernetes expands.
type EnvSummary struct {
	Name            string `json:"name"`
	Value           string `json:"value,omitempty"`
	FieldRef        string `json:"fieldRef,omitempty"`
	SecretKeyRef    string `json:"secretKeyRef,omitempty"`
	ConfigMapKeyRef string `json:"configMapKeyRef,omitempty"`
}

// PortSummary is a container port.
type PortSummary struct {
	Name     string `json:"name,omitempty"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
}

// MountSummary is a volume mount and what backs it: "pvc:<claim template or claim>",
// "secret:<name>", "emptyDir".
type MountSummary struct {
	Path     string `json:"path"`
	Source   string `json:"source"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// ServiceSummary is a Service: headless (clusterIP None) or not, its ports and selector.
type ServiceSummary struct {
	Name     string               `json:"name"`
	Headless bool                 `json:"headless"`
	Ports    []ServicePortSummary `json:"ports"`
	Selector map[string]string    `json:"selector"`
}

// ServicePortSummary is a Service port and the container port it targets (a name or a number).
type ServicePortSummary struct {
	Name       string `json:"name,omitempty"`
	Port       int32  `json:"port"`
	TargetPort string `json:"targetPort"`
	Protocol   string `json:"protocol"`
}

// Summarize builds the Summary of a render.
func Summarize(r *Rendered) Summary {
	s := Summary{Workloads: []WorkloadSummary{}, Services: []ServiceSummary{}}
	for _, w := range r.Workloads() {
		ws := WorkloadSummary{Kind: w.Kind, Name: w.Name, Replicas: w.Replicas, ServiceName: w.ServiceName,
			Hook: w.Hook, Labels: w.Labels}
		sources := volumeSources(w)
		for _, c := range w.Spec.InitContainers {
			ws.Containers = append(ws.Containers, summarizeContainer(c, true, sources))
		}
		for _, c := range w.Spec.Containers {
			ws.Containers = append(ws.Containers, summarizeContainer(c, false, sources))
		}
		s.Workloads = append(s.Workloads, ws)
	}
	for _, svc := range Of[*corev1.Service](r) {
		ss := ServiceSummary{Name: svc.Name, Headless: svc.Spec.ClusterIP == corev1.ClusterIPNone,
			Selector: svc.Spec.Selector, Ports: []ServicePortSummary{}}
		for _, p := range svc.Spec.Ports {
			ss.Ports = append(ss.Ports, ServicePortSummary{Name: p.Name, Port: p.Port,
				TargetPort: p.TargetPort.String(), Protocol: protocol(p.Protocol)})
		}
		s.Services = append(s.Services, ss)
	}
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Name < s.Services[j].Name })
	return s
}

func summarizeContainer(c corev1.Container, init bool, sources map[string]string) ContainerSummary {
	cs := ContainerSummary{Name: c.Name, Init: init, Command: c.Command, Args: c.Args,
		Env: []EnvSummary{}, Ports: []PortSummary{}, Mounts: []MountSummary{}}
	for _, e := range c.Env {
		es := EnvSummary{Name: e.Name, Value: e.Value}
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil:
				es.FieldRef = f.FieldRef.FieldPath
			case f.SecretKeyRef != nil:
				es.SecretKeyRef = f.SecretKeyRef.Name + "/" + f.SecretKeyRef.Key
			case f.ConfigMapKeyRef != nil:
				es.ConfigMapKeyRef = f.ConfigMapKeyRef.Name + "/" + f.ConfigMapKeyRef.Key
			}
		}
		cs.Env = append(cs.Env, es)
	}
	for _, p := range c.Ports {
		cs.Ports = append(cs.Ports, PortSummary{Name: p.Name, Port: p.ContainerPort, Protocol: protocol(p.Protocol)})
	}
	for _, m := range c.VolumeMounts {
		cs.Mounts = append(cs.Mounts, MountSummary{Path: m.MountPath, Source: sources[m.Name], ReadOnly: m.ReadOnly})
	}
	return cs
}

// volumeSources names what backs each volume of a workload.
func volumeSources(w Workload) map[string]string {
	src := map[string]string{}
	for _, v := range w.Spec.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil:
			src[v.Name] = "pvc:" + v.PersistentVolumeClaim.ClaimName
		case v.Secret != nil:
			src[v.Name] = "secret:" + v.Secret.SecretName
		case v.EmptyDir != nil:
			src[v.Name] = "emptyDir"
		default:
			src[v.Name] = "other"
		}
	}
	for _, name := range w.ClaimTemplates {
		src[name] = "pvc:" + name
	}
	return src
}

func protocol(p corev1.Protocol) string {
	if p == "" {
		return string(corev1.ProtocolTCP)
	}
	return string(p)
}
