//go:build !cuda

package main

import "github.com/pregate/pregate/worker"

// cudaBuilt is false: a default build has no GPUs and never links CUDA code.
const cudaBuilt = false

func openGPU(int) (gpu, error) { return nil, errNoCUDA }

func openAccelerator(int, int64) (worker.Accelerator, error) { return nil, errNoCUDA }
