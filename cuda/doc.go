//go:build cuda

// Package cuda is the GPU device: a CUDA driver context with a compute and a copy stream, the
// expert cache's device-memory arena, pinned host staging buffers, host-to-device copies with an
// event per expert, and the compute.Backend whose ops are this package's kernels.
//
// It is built only with -tags cuda and needs nothing at build time but cuda.h: the driver
// (libcuda.so.1) is opened with dlopen when a device is opened, so a cuda binary starts on any
// host, and on one without a driver or GPU Open returns an error that says so.
//
// Data flow of an expert: the worker's fetcher reads the blob from the socket straight into a
// pinned HostBuffer (Bytes is a Go slice over the pinned memory); CopyToDevice enqueues one DMA of
// it into the expert's DeviceBuffer (a range of the arena) on the copy stream and records an Event;
// the worker reads the blob's header from the staged bytes and takes each tensor as
// DeviceBuffer.Tensor at its offset (a device pointer, no copy); the compute stream can wait for the
// event on the device (Device.WaitEvent) before the expert's first kernel, so that the host need
// not block on a copy.
package cuda
