//go:build cuda

package main

import (
	"context"
	"fmt"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/cuda"
	"github.com/pregate/pregate/worker"
)

// cudaBuilt is true: this binary opens GPUs with package cuda. It starts on any host (the driver,
// libcuda.so.1, is loaded when a device is opened); on one without the driver or a GPU, cuda.Open's
// error says which, and the command exits 1.
const cudaBuilt = true

// openGPU opens the ordinal-th GPU for a forward pass on its backend (generate).
func openGPU(ordinal int) (gpu, error) {
	d, err := cuda.Open(ordinal)
	if err != nil {
		return nil, err
	}
	return cudaDevice{d}, nil
}

// openAccelerator opens the ordinal-th GPU for a worker, with cacheBytes of device memory reserved
// for its expert cache.
func openAccelerator(ordinal int, cacheBytes int64) (worker.Accelerator, error) {
	d, err := cuda.Open(ordinal)
	if err != nil {
		return nil, err
	}
	if err := d.ReserveArena(cacheBytes); err != nil {
		d.Close()
		return nil, err
	}
	return cudaDevice{d}, nil
}

// cudaDevice adapts package cuda's concrete types to the interfaces the worker and the commands
// declare (a library does not import the worker, a daemon package).
type cudaDevice struct{ d *cuda.Device }

func (c cudaDevice) Name() string             { return c.d.Name() }
func (c cudaDevice) Backend() compute.Backend { return c.d.Backend() }
func (c cudaDevice) Close() error             { return c.d.Close() }

func (c cudaDevice) Alloc(n int64) (worker.DeviceBuffer, error) {
	b, err := c.d.Alloc(n)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (c cudaDevice) AllocHost(n int64) (worker.HostBuffer, error) {
	b, err := c.d.AllocHost(n)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (c cudaDevice) CopyToDevice(dst worker.DeviceBuffer, src worker.HostBuffer, n int64) worker.Event {
	db, ok := dst.(*cuda.DeviceBuffer)
	hb, ok2 := src.(*cuda.HostBuffer)
	if !ok || !ok2 {
		return failedEvent{fmt.Errorf("cuda: copy from a %T into a %T: both must come from %s", src, dst, c.d.Name())}
	}
	return c.d.CopyToDevice(db, hb, n)
}

// WaitEvent implements worker.StreamWaiter: the compute stream waits for the copy on the device. A
// copy that has completed needs no wait (and one that failed is the expert's error); an event of
// another device is waited for on the host.
func (c cudaDevice) WaitEvent(ev worker.Event) error {
	select {
	case <-ev.Done():
		return ev.Err()
	default:
	}
	e, ok := ev.(*cuda.Event)
	if !ok {
		return worker.Wait(context.Background(), ev)
	}
	c.d.WaitEvent(e)
	return nil
}

// failedEvent is an Event that completed with err.
type failedEvent struct{ err error }

func (e failedEvent) Done() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

func (e failedEvent) Err() error { return e.err }
