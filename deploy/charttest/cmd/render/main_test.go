package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pregate/pregate/deploy/charttest"
)

// TestRun renders the HA values with a release and namespace of our own and reads the JSON back.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-f", "../../testdata/ha.yaml", "--namespace", "ml", "--release", "prod"}, &out); err != nil {
		t.Fatal(err)
	}
	var s charttest.Summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	var coord *charttest.WorkloadSummary
	for i, w := range s.Workloads {
		if w.Kind == "StatefulSet" && w.Name == "prod-pregate-coordinator" {
			coord = &s.Workloads[i]
		}
	}
	if coord == nil || coord.Replicas == nil || *coord.Replicas != 3 || coord.ServiceName != "prod-pregate-coordinator-headless" {
		t.Fatalf("coordinators %+v", coord)
	}
	args := strings.Join(coord.Containers[0].Args, " ")
	if !strings.Contains(args, "prod-pregate-coordinator-2=http://prod-pregate-coordinator-2.prod-pregate-coordinator-headless.ml.svc.cluster.local:2380") {
		t.Errorf("coordinator args %s", args)
	}
	if len(s.Services) != 4 {
		t.Errorf("%d services, want 4", len(s.Services))
	}
}

func TestRunRejectsBadValues(t *testing.T) {
	err := run([]string{"-f", "../../testdata/minimal.yaml", "-f", "testdata/bad.yaml"}, new(bytes.Buffer))
	if err == nil || !strings.Contains(err.Error(), "value must be one of 1, 3") {
		t.Errorf("error %v, want the schema's message", err)
	}
}
