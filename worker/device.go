package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/pregate/pregate/compute"
)

// Device is what the worker needs from an accelerator to stream experts into its memory. It follows
// CUDA's model so that the CUDA device is one driver call per method: device memory (cuMemAlloc),
// pinned host staging buffers (cuMemHostAlloc: the only memory a DMA engine copies from
// asynchronously), one copy stream on which host-to-device copies run in order, overlapping compute
// (cuMemcpyHtoDAsync), and an event recorded after each copy (cuEventRecord / cuEventSynchronize).
type Device interface {
	// Name says what the device is ("cpu", "cuda:0 NVIDIA H200").
	Name() string
	// Alloc returns n bytes of device memory.
	Alloc(n int64) (DeviceBuffer, error)
	// AllocHost returns n bytes of pinned host memory.
	AllocHost(n int64) (HostBuffer, error)
	// CopyToDevice enqueues a copy of src[:n] to dst[:n] on the copy stream and returns the event
	// that completes once the copy has. It does not block.
	CopyToDevice(dst DeviceBuffer, src HostBuffer, n int64) Event
	// Close waits for the copy stream to drain and releases the device.
	Close() error
}

// HostAddressable is implemented by a device whose memory the host reads and writes directly
// (the CPU device; unified memory). The pipeline fetches experts straight into such a device's
// buffers: the staging buffer and the copy exist for a discrete GPU's DMA, and on a CPU they would
// only add a memcpy per expert.
type HostAddressable interface {
	HostAddressable() bool
}

// ComputeDevice is implemented by a device that also runs the engine's ops (a GPU, whose expert
// buffers the engine then computes on in place): the worker loads the model on its Backend, and
// DeviceBuffer.Tensor hands out tensors of that backend. A device without it (the CPU) has the
// engine run on a compute.CPU of the worker's threads, which computes on host memory.
type ComputeDevice interface {
	Backend() compute.Backend
}

// StreamWaiter is implemented by a device whose compute stream can wait, on the device, for a copy's
// event (cuStreamWaitEvent): the pipeline then hands the engine an expert as soon as its copy is
// enqueued, and has the stream that runs the expert's ops wait for the copy, instead of the host
// waiting for it. A device without it (the CPU) has each expert's copy complete before the engine
// gets it.
type StreamWaiter interface {
	// WaitEvent makes the ops the backend issues from now on wait for ev's copy. It returns ev's
	// error if the copy has already failed (the expert is then unavailable); a copy that fails
	// later fails the backend's next Sync or Download. Called from the goroutine that issues the
	// backend's ops (the engine's).
	WaitEvent(ev Event) error
}

// HostBuffer is pinned host memory.
type HostBuffer interface {
	Bytes() []byte
	Free()
}

// DeviceBuffer is device memory.
type DeviceBuffer interface {
	Len() int64
	// HostView returns the buffer as memory this process can compute on, or nil when the device's
	// memory is not host-addressable. The CPU device's buffers are; the engine computes on them.
	HostView() []byte
	// Tensor returns the n elements of dt at byte offset off of the buffer as a tensor of the
	// engine's compute backend, without a copy: the CPU device's is a view of the buffer's bytes, a
	// GPU's a device pointer into its memory. The pipeline hands the engine expert weights this way
	// when the device is not host-addressable.
	Tensor(off int64, dt compute.DType, n int) (compute.Tensor, error)
	Free()
}

// Event is the completion of an enqueued device operation.
type Event interface {
	// Done is closed when the operation has completed (successfully or not).
	Done() <-chan struct{}
	// Err is the operation's error, valid once Done is closed.
	Err() error
}

// Wait waits for ev or ctx, whichever comes first.
func Wait(ctx context.Context, ev Event) error {
	select {
	case <-ev.Done():
		return ev.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ErrDeviceClosed is returned by operations on a closed device.
var ErrDeviceClosed = errors.New("worker: device closed")

// CPU is the device of a worker without a GPU: its "device memory" is ordinary memory the engine
// computes on, its pinned buffers are ordinary buffers, and its copy stream is one goroutine that
// runs copies in the order they were enqueued, as a CUDA stream does.
type CPU struct {
	copies chan cpuCopy
	wg     sync.WaitGroup
	mu     sync.RWMutex
	closed bool

	// Freed device buffers, by size, for reuse: experts of a model share a few sizes, and the
	// cache frees and allocates one per fetch; recycling them spares the garbage collector tens
	// of megabytes per decode step (a CUDA device would keep the same free list over cuMemAlloc).
	poolMu sync.Mutex
	pool   map[int64][][]byte
	pooled int64
}

// maxPooled bounds the bytes of freed buffers the CPU device keeps for reuse.
const maxPooled = 1 << 30

type cpuCopy struct {
	dst []byte
	src []byte
	ev  *cpuEvent
}

// NewCPU starts a CPU device.
func NewCPU() *CPU {
	d := &CPU{copies: make(chan cpuCopy, 64), pool: map[int64][][]byte{}}
	d.wg.Add(1)
	go d.stream()
	return d
}

func (d *CPU) stream() {
	defer d.wg.Done()
	for c := range d.copies {
		copy(c.dst, c.src)
		c.ev.complete(nil)
	}
}

// Name implements Device.
func (d *CPU) Name() string { return "cpu" }

// HostAddressable implements HostAddressable: the CPU device's memory is the host's.
func (d *CPU) HostAddressable() bool { return true }

// Alloc implements Device.
func (d *CPU) Alloc(n int64) (DeviceBuffer, error) {
	if n < 0 {
		return nil, fmt.Errorf("worker: alloc of %d bytes", n)
	}
	d.poolMu.Lock()
	if free := d.pool[n]; len(free) > 0 {
		b := free[len(free)-1]
		d.pool[n] = free[:len(free)-1]
		d.pooled -= n
		d.poolMu.Unlock()
		return &cpuBuffer{b: b, dev: d}, nil
	}
	d.poolMu.Unlock()
	return &cpuBuffer{b: make([]byte, n), dev: d}, nil
}

// recycle keeps a freed buffer for the next Alloc of its size.
func (d *CPU) recycle(b []byte) {
	n := int64(len(b))
	d.poolMu.Lock()
	defer d.poolMu.Unlock()
	if d.pooled+n <= maxPooled {
		d.pool[n] = append(d.pool[n], b)
		d.pooled += n
	}
}

// AllocHost implements Device.
func (d *CPU) AllocHost(n int64) (HostBuffer, error) {
	if n < 0 {
		return nil, fmt.Errorf("worker: host alloc of %d bytes", n)
	}
	return &cpuBuffer{b: make([]byte, n)}, nil
}

// CopyToDevice implements Device.
func (d *CPU) CopyToDevice(dst DeviceBuffer, src HostBuffer, n int64) Event {
	ev := &cpuEvent{done: make(chan struct{})}
	db, sb := dst.HostView(), src.Bytes()
	if n < 0 || n > int64(len(db)) || n > int64(len(sb)) {
		ev.complete(fmt.Errorf("worker: copy of %d bytes into %d from %d", n, len(db), len(sb)))
		return ev
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		ev.complete(ErrDeviceClosed)
		return ev
	}
	d.copies <- cpuCopy{dst: db[:n], src: sb[:n], ev: ev}
	return ev
}

// Close implements Device.
func (d *CPU) Close() error {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.copies)
	}
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}

type cpuBuffer struct {
	b   []byte
	dev *CPU // set for device buffers, which are recycled
}

func (b *cpuBuffer) Bytes() []byte    { return b.b }
func (b *cpuBuffer) HostView() []byte { return b.b }
func (b *cpuBuffer) Len() int64       { return int64(len(b.b)) }

// Tensor implements DeviceBuffer: a view of the buffer's bytes (aligned for dt).
func (b *cpuBuffer) Tensor(off int64, dt compute.DType, n int) (compute.Tensor, error) {
	size := int64(dt.Size())
	if size == 0 || off < 0 || n < 0 || off+int64(n)*size > int64(len(b.b)) {
		return compute.Tensor{}, fmt.Errorf("worker: %d elements of %s at byte %d of a %d-byte buffer", n, dt, off, len(b.b))
	}
	if n == 0 {
		return compute.Tensor{}, fmt.Errorf("worker: an empty %s tensor", dt)
	}
	p := unsafe.Pointer(&b.b[off])
	if uintptr(p)%uintptr(size) != 0 {
		return compute.Tensor{}, fmt.Errorf("worker: %s tensor at byte %d is not aligned", dt, off)
	}
	if dt == compute.BF16 {
		return compute.HostTensorBF16(unsafe.Slice((*uint16)(p), n)), nil
	}
	return compute.HostTensor(unsafe.Slice((*float32)(p), n)), nil
}

func (b *cpuBuffer) Free() {
	if b.dev != nil && b.b != nil {
		b.dev.recycle(b.b)
	}
	b.b = nil
}

type cpuEvent struct {
	done chan struct{}
	err  error
}

func (e *cpuEvent) complete(err error) {
	e.err = err
	close(e.done)
}

func (e *cpuEvent) Done() <-chan struct{} { return e.done }
func (e *cpuEvent) Err() error            { return e.err }

// Accelerator is a GPU as a worker uses it: the Device its expert cache and staging buffers live
// on, which also runs the engine (ComputeDevice; package cuda's, through cmd/pregate's cuda build).
// The worker opens it through Config.OpenAccelerator and closes it as its Device.
type Accelerator interface {
	Device
	ComputeDevice
}
