package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// The --device flag of worker, up, generate and bench: "cpu", or "cuda" / "cuda:N" for the N-th
// GPU. Only a binary built with -tags cuda (`make build-cuda`) has GPUs: device_cuda.go opens them
// with package cuda; a default build (device_nocuda.go) answers errNoCUDA, so it never links the
// CUDA code. A cuda binary on a host without a driver or GPU gets cuda.Open's error (exit 1).

// errNoCUDA is a default build's answer to --device cuda.
var errNoCUDA = errors.New("this binary was built without CUDA: make build-cuda (bin/pregate-cuda)")

// deviceSpec is a parsed --device value.
type deviceSpec struct {
	cuda    bool
	ordinal int // the GPU's index (cuda only)
}

// parseDevice parses --device: cpu, cuda (GPU 0) or cuda:N.
func parseDevice(s string) (deviceSpec, error) {
	switch {
	case s == "cpu":
		return deviceSpec{}, nil
	case s == "cuda":
		return deviceSpec{cuda: true}, nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(strings.TrimPrefix(s, "cuda:"))
		if err != nil || n < 0 {
			return deviceSpec{}, fmt.Errorf("--device %q: the GPU index must be a non-negative integer (cuda:0, cuda:1, ...)", s)
		}
		return deviceSpec{cuda: true, ordinal: n}, nil
	}
	return deviceSpec{}, fmt.Errorf("--device %q: want cpu, cuda or cuda:N", s)
}

func (d deviceSpec) String() string {
	if !d.cuda {
		return "cpu"
	}
	return "cuda:" + strconv.Itoa(d.ordinal)
}

// gpu is what the commands need from an opened GPU (package cuda's *Device).
type gpu interface {
	// Name says which GPU it is ("cuda:0 NVIDIA H200").
	Name() string
	// Backend is the compute backend whose tensors live on the GPU.
	Backend() compute.Backend
	Close() error
}

// openBackend returns the backend --device names: a GPU's, or a CPU one with threads threads
// (0: all cores). release frees it.
func openBackend(spec deviceSpec, threads int) (be compute.Backend, name string, release func(), err error) {
	if !spec.cuda {
		cpu := compute.NewCPU(threads)
		return cpu, fmt.Sprintf("cpu (%d threads)", cpu.Threads()), cpu.Close, nil
	}
	g, err := openGPU(spec.ordinal)
	if err != nil {
		return nil, "", nil, fmt.Errorf("--device %s: %w", spec, err)
	}
	return g.Backend(), g.Name(), func() { g.Close() }, nil
}

// setWorkerDevice makes cfg run on the device spec names: the CPU, or a GPU the worker opens.
func setWorkerDevice(cfg *worker.Config, spec deviceSpec) error {
	cfg.Device, cfg.OpenAccelerator = spec.String(), nil
	if !spec.cuda {
		return nil
	}
	if !cudaBuilt {
		return fmt.Errorf("--device %s: %w", spec, errNoCUDA)
	}
	cfg.OpenAccelerator = func(cacheBytes int64) (worker.Accelerator, error) {
		return openAccelerator(spec.ordinal, cacheBytes)
	}
	return nil
}

// deviceFlagUsage is --device's help text.
const deviceFlagUsage = "cpu, or cuda / cuda:N for the N-th GPU (a binary built with `make build-cuda`)"
