//go:build cuda

package cuda

import (
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/pregate/pregate/compute"
)

// The kernels, compiled from kernels/kernels.cu by `make ptx` (see kernels/README.md). The driver
// JIT-compiles the PTX for the device when the module is loaded (sm_90 PTX on Hopper, sm_80 PTX on
// Ampere and anything else from 8.0 up).
var (
	//go:embed ptx/kernels_sm80.ptx
	ptxSM80 []byte
	//go:embed ptx/kernels_sm90.ptx
	ptxSM90 []byte
)

// ErrClosed is returned by operations on a closed device.
var ErrClosed = errors.New("cuda: device closed")

// notFound is the error of Open with an ordinal the driver does not have.
type notFound struct{ ordinal, count int }

func (e *notFound) Error() string {
	return fmt.Sprintf("cuda: device %d not found (%d devices)", e.ordinal, e.count)
}

func (e *notFound) Is(target error) bool { return target == ErrNoDevice }

// Device is one GPU: its primary context, a compute stream (the backend's ops, in order) and a copy
// stream (expert uploads, overlapping the compute), the kernels, the expert arena and the pinned
// staging buffers. Its methods are safe for concurrent use; the Backend's ops are issued by one
// goroutine at a time (compute.Backend's rule).
type Device struct {
	ordinal int
	name    string // "cuda:0 NVIDIA H200"
	dev     cudev
	ctx     ctx
	sms     int   // streaming multiprocessors
	cc      int   // compute capability, major·10 + minor
	memory  int64 // total device memory, bytes
	peakBW  float64

	compute stream
	copies  stream
	mod     module
	k       kernels

	// mu guards closed and arena; CopyToDevice holds it shared.
	mu     sync.RWMutex
	closed bool
	arena  *arena

	// copyMu keeps a copy, its event's record and its hand-off to the waiter together, so the
	// events reach the waiter in the copy stream's order. It guards fenced.
	copyMu sync.Mutex
	// The reuse fence. An expert's buffer is freed (DeviceBuffer.Free) once the ops that read it
	// are enqueued on the compute stream, not run; the next copy into that arena memory must not
	// overtake them. frees counts DeviceBuffer.Frees; a copy issued after one it has not fenced
	// records fence on the compute stream and makes the copy stream wait for it (everything
	// enqueued for compute until then, the freed buffer's readers among them). fenced is the
	// count the last fence covered.
	fence  event
	frees  atomic.Uint64
	fenced uint64
	// waits carries each copy's event to the waiter goroutine, which completes them in order.
	waits      chan *Event
	waiterDone chan struct{}

	backend *Backend
}

// Open opens device ordinal: it loads the driver, retains the device's primary context, creates
// the two streams and loads the kernels. A host without a driver or without that device gets an
// error wrapping ErrNoDriver or ErrNoDevice, whose text says which.
func Open(ordinal int) (d *Device, err error) {
	if err := loadDriver(); err != nil {
		var ce *Error
		if errors.As(err, &ce) && ce.Code == codeNoDevice {
			return nil, fmt.Errorf("%w: %v", &notFound{ordinal: ordinal, count: 0}, ce)
		}
		return nil, err
	}
	n, err := DeviceCount()
	if err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= n {
		return nil, &notFound{ordinal: ordinal, count: n}
	}
	dev, err := getDevice(ordinal)
	if err != nil {
		return nil, err
	}
	d = &Device{ordinal: ordinal, dev: dev}
	name, err := dev.name()
	if err != nil {
		return nil, err
	}
	d.name = fmt.Sprintf("cuda:%d %s", ordinal, name)
	major, err := dev.attribute(attrCCMajor)
	if err != nil {
		return nil, err
	}
	minor, err := dev.attribute(attrCCMinor)
	if err != nil {
		return nil, err
	}
	d.cc = major*10 + minor
	if d.cc < 80 {
		return nil, fmt.Errorf("cuda: %s is sm_%d: the kernels need sm_80 or newer (Ampere, Hopper)", d.name, d.cc)
	}
	if d.sms, err = dev.attribute(attrSMs); err != nil {
		return nil, err
	}
	if d.memory, err = dev.totalMem(); err != nil {
		return nil, err
	}
	// Theoretical bandwidth: clock (kHz) × 2 (DDR) × bus width (bits) / 8. A figure for reports,
	// not used for decisions.
	if clock, err := dev.attribute(attrMemClock); err == nil {
		if width, err := dev.attribute(attrBusWidth); err == nil {
			d.peakBW = float64(clock) * 1e3 * 2 * float64(width) / 8
		}
	}

	if d.ctx, err = dev.retainPrimary(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	if d.compute, err = d.ctx.newStream(); err != nil {
		return nil, err
	}
	if d.copies, err = d.ctx.newStream(); err != nil {
		return nil, err
	}
	image := ptxSM80
	if d.cc >= 90 {
		image = ptxSM90
	}
	// cuModuleLoadData wants a NUL-terminated PTX image.
	if d.mod, err = d.ctx.loadModule(append(image[:len(image):len(image)], 0)); err != nil {
		return nil, fmt.Errorf("cuda: loading the kernels on %s: %w", d.name, err)
	}
	if err = d.k.load(d.ctx, d.mod, image); err != nil {
		return nil, err
	}
	if d.fence, err = d.ctx.newEvent(false); err != nil {
		return nil, err
	}
	d.waits = make(chan *Event, 1024)
	d.waiterDone = make(chan struct{})
	go d.waiter()
	d.backend = newBackend(d)
	return d, nil
}

// release frees what Open acquired, in reverse order. It runs once, from Close or from a failed
// Open; the zero values of a partly opened device are skipped.
func (d *Device) release() error {
	var errs []error
	if d.backend != nil {
		errs = append(errs, d.backend.release())
	}
	if d.arena != nil {
		errs = append(errs, d.ctx.memFree(d.arena.base))
		d.arena = nil
	}
	if d.fence.e != nil {
		errs = append(errs, d.ctx.destroyEvent(d.fence))
	}
	if d.mod.m != nil {
		errs = append(errs, d.ctx.unloadModule(d.mod))
	}
	if d.copies.s != nil {
		errs = append(errs, d.ctx.destroyStream(d.copies))
	}
	if d.compute.s != nil {
		errs = append(errs, d.ctx.destroyStream(d.compute))
	}
	if d.ctx.c != nil {
		errs = append(errs, d.dev.releasePrimary())
	}
	return errors.Join(errs...)
}

// Name is the device's name, "cuda:0 NVIDIA H200".
func (d *Device) Name() string { return d.name }

// Info describes the device for logs and benchmark tables.
type Info struct {
	Name              string
	ComputeCapability int     // major·10 + minor (90 for Hopper)
	SMs               int     // streaming multiprocessors
	Memory            int64   // bytes
	PeakBandwidth     float64 // bytes/s from the memory clock and bus width (0 if unknown)
	Driver            int     // CUDA driver version (13000 for 13.0)
}

// Info returns the device's description.
func (d *Device) Info() Info {
	v, _ := DriverVersion()
	return Info{Name: d.name, ComputeCapability: d.cc, SMs: d.sms, Memory: d.memory, PeakBandwidth: d.peakBW, Driver: v}
}

// Backend is the compute.Backend that runs on this device's compute stream (a *Backend). The
// engine loads a model on it; DeviceBuffer.Tensor hands out its tensors.
func (d *Device) Backend() compute.Backend { return d.backend }

// WaitEvent makes the compute stream wait, on the device, for ev's copy: the ops issued after it
// run once the copy has landed, and the host does not block. A copy that failed fails the backend
// (sticky, like an op's failure). Call it from the goroutine that issues the backend's ops.
func (d *Device) WaitEvent(ev *Event) { d.backend.WaitEvent(ev) }

// Close waits for both streams to drain, stops the event waiter and releases everything the device
// holds: the backend's memory, the arena, the kernels, the streams and the context. Buffers from
// AllocHost must be freed before Close (their memory goes with the context). It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	// No CopyToDevice is in flight now (it holds mu shared), so nothing sends on waits.
	close(d.waits)
	<-d.waiterDone
	errs := []error{d.ctx.syncStream(d.copies), d.ctx.syncStream(d.compute)}
	errs = append(errs, d.release())
	return errors.Join(errs...)
}

// waiter completes the copy stream's events in order: it blocks in cuEventSynchronize (the events
// are created with CU_EVENT_BLOCKING_SYNC, so the thread sleeps) and then closes the Event's Done.
func (d *Device) waiter() {
	defer close(d.waiterDone)
	for ev := range d.waits {
		ev.complete(d.ctx.syncEvent(ev.ev))
	}
}
