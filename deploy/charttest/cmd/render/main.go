// Command render prints what the pregate chart would run, as JSON (charttest.Summary): for every
// StatefulSet, Deployment, Job and Pod its kind, name, replicas, serviceName and each container's
// command, args, env (values, or the fieldRef path), ports and mounts; for every Service its name,
// whether it is headless, its ports and selector.
//
//	go run ./cmd/render -f values.yaml [-f more.yaml] [--namespace ns] [--release name] [--api-versions monitoring.coreos.com/v1]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pregate/pregate/deploy/charttest"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	var files, apis listFlag
	fs.Var(&files, "f", "values file (repeatable; later files win)")
	chartDir := fs.String("chart", "", "chart directory (default: helm/pregate above the working directory)")
	namespace := fs.String("namespace", "default", "release namespace")
	release := fs.String("release", "pregate", "release name")
	fs.Var(&apis, "api-versions", "API versions the cluster serves beyond the defaults (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	dir := *chartDir
	if dir == "" {
		var err error
		if dir, err = charttest.ChartDir("."); err != nil {
			return err
		}
	}
	vals, err := charttest.ReadValues(files...)
	if err != nil {
		return err
	}
	r, err := charttest.Render(dir, vals, charttest.Options{Release: *release, Namespace: *namespace, APIVersions: apis})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(charttest.Summarize(r))
}
