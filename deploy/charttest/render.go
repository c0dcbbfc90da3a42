// Package charttest renders the pregate Helm chart (helm/pregate) with Helm's Go SDK, as `helm
// template` would with a fake release, and decodes every rendered object strictly into its
// Kubernetes API type, so that a misspelt or misplaced field fails. The chart's tests
// (charttest_test.go) and the render tool (cmd/render), which prints what each pod would run for
// the network-namespace suite, are built on it.
//
// It is a module of its own so that Helm's and Kubernetes' dependencies never enter pregate's.
package charttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// MonitoringAPI is the API group version a ServiceMonitor needs; the chart renders one only where
// the cluster's capabilities list it.
const MonitoringAPI = "monitoring.coreos.com/v1"

// Options says how to render: the release, and the API versions the fake cluster serves beyond
// Helm's defaults.
type Options struct {
	Release     string   // default "pregate"
	Namespace   string   // default "default"
	APIVersions []string // e.g. MonitoringAPI
}

// Object is one rendered Kubernetes object, decoded into its API type (*appsv1.StatefulSet, …).
type Object struct {
	Template string // the template it came from, e.g. pregate/templates/store.yaml
	Kind     string
	Name     string
	Obj      any
}

// Rendered is a rendered chart.
type Rendered struct {
	Objects []Object
	Notes   string
}

// ServiceMonitor is the part of the Prometheus Operator's monitoring.coreos.com/v1 ServiceMonitor
// the chart uses: it is not a k8s.io/api type, and is decoded as strictly.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// kinds maps apiVersion/kind to a constructor of its Go type: the only kinds the chart may render.
var kinds = map[string]func() any{
	"v1/Service":                         func() any { return new(corev1.Service) },
	"v1/Secret":                          func() any { return new(corev1.Secret) },
	"v1/Pod":                             func() any { return new(corev1.Pod) },
	"apps/v1/StatefulSet":                func() any { return new(appsv1.StatefulSet) },
	"apps/v1/Deployment":                 func() any { return new(appsv1.Deployment) },
	"batch/v1/Job":                       func() any { return new(batchv1.Job) },
	"policy/v1/PodDisruptionBudget":      func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return new(networkingv1.NetworkPolicy) },
	"networking.k8s.io/v1/Ingress":       func() any { return new(networkingv1.Ingress) },
	MonitoringAPI + "/ServiceMonitor":    func() any { return new(ServiceMonitor) },
}

// ChartDir finds helm/pregate above dir (the repository's chart, wherever the module is run from).
func ChartDir(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		c := filepath.Join(d, "helm", "pregate")
		if _, err := os.Stat(filepath.Join(c, "Chart.yaml")); err == nil {
			return c, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("charttest: no helm/pregate/Chart.yaml above %s", dir)
		}
	}
}

// ReadValues reads values files and merges them in order (later files win), as helm -f does.
func ReadValues(files ...string) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range files {
		v, err := common.ReadValuesFile(f)
		if err != nil {
			return nil, err
		}
		vals = loader.MergeMaps(vals, v)
	}
	return vals, nil
}

// Render renders the chart in chartDir with vals over its values.yaml: values.schema.json is
// checked, templates run in strict mode (a missing value fails), and every object is decoded
// strictly into its type.
func Render(chartDir string, vals map[string]any, opts Options) (*Rendered, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	return RenderChart(ch, vals, opts)
}

// RenderChart is Render for a loaded chart.
func RenderChart(ch *chart.Chart, vals map[string]any, opts Options) (*Rendered, error) {
	if opts.Release == "" {
		opts.Release = "pregate"
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	caps := common.DefaultCapabilities.Copy()
	caps.APIVersions = append(append(common.VersionSet{}, caps.APIVersions...), opts.APIVersions...)
	top, err := util.ToRenderValuesWithSchemaValidation(ch, vals,
		common.ReleaseOptions{Name: opts.Release, Namespace: opts.Namespace, Revision: 1, IsInstall: true}, caps, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.RenderWithContext(context.Background(), ch, top)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	r := &Rendered{}
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			r.Notes = files[name]
			continue
		}
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		objs, err := decodeAll(name, files[name])
		if err != nil {
			return nil, err
		}
		r.Objects = append(r.Objects, objs...)
	}
	return r, nil
}

// decodeAll splits a rendered file into its YAML documents and decodes each strictly.
func decodeAll(template, text string) ([]Object, error) {
	var out []Object
	for i, doc := range splitDocuments(text) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", template, i, err)
		}
		newObj, ok := kinds[head.APIVersion+"/"+head.Kind]
		if !ok {
			return nil, fmt.Errorf("%s, document %d: unexpected kind %s/%s", template, i, head.APIVersion, head.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s: %s %s: %w", template, head.Kind, head.Metadata.Name, err)
		}
		if head.Metadata.Name == "" {
			return nil, fmt.Errorf("%s: a %s without a name", template, head.Kind)
		}
		out = append(out, Object{Template: template, Kind: head.Kind, Name: head.Metadata.Name, Obj: obj})
	}
	return out, nil
}

// splitDocuments returns the non-empty YAML documents of text (separated by lines of ---).
func splitDocuments(text string) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if b := bytes.TrimSpace(cur.Bytes()); len(b) > 0 && !onlyComments(b) {
			docs = append(docs, append([]byte(nil), b...))
		}
		cur.Reset()
	}
	for line := range strings.SplitSeq(text, "\n") {
		if strings.TrimRight(line, " \t") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func onlyComments(b []byte) bool {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if l := bytes.TrimSpace(line); len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

// Of returns the rendered objects of type T, e.g. Of[*appsv1.StatefulSet](r).
func Of[T any](r *Rendered) []T {
	var out []T
	for _, o := range r.Objects {
		if t, ok := o.Obj.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// Workload is what the chart runs: a StatefulSet's, Deployment's or Job's pod template, or a Pod.
type Workload struct {
	Kind        string
	Name        string
	Replicas    *int32
	ServiceName string            // a StatefulSet's governing Service
	Hook        string            // the helm.sh/hook annotation (a Job's or test Pod's)
	Selector    map[string]string // matchLabels (a Pod: its own labels)
	Labels      map[string]string // the pod template's labels
	Spec        *corev1.PodSpec
	// ClaimTemplates are a StatefulSet's volumeClaimTemplates (one PVC per pod, mounted by name).
	ClaimTemplates []string
}

// Workloads returns every workload in the render, in render order.
func (r *Rendered) Workloads() []Workload {
	var out []Workload
	for _, o := range r.Objects {
		switch v := o.Obj.(type) {
		case *appsv1.StatefulSet:
			w := Workload{Kind: o.Kind, Name: v.Name, Replicas: v.Spec.Replicas, ServiceName: v.Spec.ServiceName,
				Selector: matchLabels(v.Spec.Selector), Labels: v.Spec.Template.Labels, Spec: &v.Spec.Template.Spec}
			for _, pvc := range v.Spec.VolumeClaimTemplates {
				w.ClaimTemplates = append(w.ClaimTemplates, pvc.Name)
			}
			out = append(out, w)
		case *appsv1.Deployment:
			out = append(out, Workload{Kind: o.Kind, Name: v.Name, Replicas: v.Spec.Replicas,
				Selector: matchLabels(v.Spec.Selector), Labels: v.Spec.Template.Labels, Spec: &v.Spec.Template.Spec})
		case *batchv1.Job:
			out = append(out, Workload{Kind: o.Kind, Name: v.Name, Hook: v.Annotations["helm.sh/hook"],
				Selector: v.Spec.Template.Labels, Labels: v.Spec.Template.Labels, Spec: &v.Spec.Template.Spec})
		case *corev1.Pod:
			out = append(out, Workload{Kind: o.Kind, Name: v.Name, Hook: v.Annotations["helm.sh/hook"],
				Selector: v.Labels, Labels: v.Labels, Spec: &v.Spec})
		}
	}
	return out
}

func matchLabels(s *metav1.LabelSelector) map[string]string {
	if s == nil {
		return nil
	}
	return s.MatchLabels
}

// Selects reports whether every selector label is among labels (an empty selector selects nothing
// here: the chart never means "everything").
func Selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// ErrNotFound is returned by Find when no object has the kind and name asked for.
var ErrNotFound = errors.New("charttest: object not found")

// Find returns the object of that kind and name.
func (r *Rendered) Find(kind, name string) (any, error) {
	for _, o := range r.Objects {
		if o.Kind == kind && o.Name == name {
			return o.Obj, nil
		}
	}
	return nil, fmt.Errorf("%w: %s %s", ErrNotFound, kind, name)
}
