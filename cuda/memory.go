//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/pregate/pregate/compute"
)

// The worker's side of the device: the expert cache's device memory (an arena), pinned staging
// buffers and host-to-device copies on the copy stream, each completing an Event. The method set
// mirrors worker.Device (Alloc, AllocHost, CopyToDevice, Close) with this package's concrete types;
// the worker's interfaces are satisfied through a small adapter in the cuda build of cmd/pregate,
// because a library does not import a daemon package.

// ReserveArena allocates the expert cache's device memory in one cuMemAlloc, from which Alloc
// carves the experts' buffers. Call it once, before the first Alloc, with the cache's budget: the
// arena holds that many bytes of buffers, plus room for rounding each buffer up to 256 bytes
// (arenaSlack), so a cache that keeps its experts within its budget always finds its buffer.
func (d *Device) ReserveArena(bytes int64) error {
	if bytes <= 0 {
		return fmt.Errorf("cuda: expert arena of %d bytes", bytes)
	}
	bytes += arenaSlack(bytes)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.arena != nil {
		return fmt.Errorf("cuda: %s already has an expert arena of %d bytes", d.name, d.arena.size)
	}
	p, err := d.ctx.memAlloc(bytes)
	if err != nil {
		free, total, _ := d.ctx.memInfo()
		return fmt.Errorf("cuda: expert arena of %d bytes on %s (%d of %d bytes free): %w", bytes, d.name, free, total, err)
	}
	d.arena = newArena(p, bytes)
	return nil
}

// arenaSlack is what an arena for a budget of bytes adds for alignment: 256 bytes for each of up
// to 4096 buffers, and for one buffer per 1 MiB of budget beyond that (no expert blob is smaller).
func arenaSlack(bytes int64) int64 { return 1<<20 + bytes/4096 }

// DeviceBuffer is a range of the expert arena.
type DeviceBuffer struct {
	dev   *Device
	ptr   devptr
	off   int64 // in the arena
	n     int64
	freed atomic.Bool
}

// Alloc returns n bytes of the expert arena: no driver call, so the cache may call it under its
// lock. It fails with ErrOutOfMemory when no free range fits.
func (d *Device) Alloc(n int64) (*DeviceBuffer, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.arena == nil {
		return nil, fmt.Errorf("cuda: Alloc of %d bytes on %s before ReserveArena", n, d.name)
	}
	off, err := d.arena.alloc(n)
	if err != nil {
		return nil, err
	}
	return &DeviceBuffer{dev: d, ptr: d.arena.base + devptr(off), off: off, n: n}, nil
}

// Len is the buffer's size in bytes.
func (b *DeviceBuffer) Len() int64 { return b.n }

// HostView is nil: device memory is not host-addressable (worker.DeviceBuffer's contract).
func (b *DeviceBuffer) HostView() []byte { return nil }

// Ptr is the buffer's device address.
func (b *DeviceBuffer) Ptr() uint64 { return uint64(b.ptr) }

// Tensor returns the n elements of dt at byte offset off of the buffer as a tensor of the device's
// Backend: a device pointer into the arena, no copy (worker.DeviceBuffer's contract). The worker
// parses an expert's blob header on the host, from the staging buffer the copy came from, and asks
// for each tensor at its offset in the blob. The offset must be a multiple of the element size and
// the elements within the buffer.
func (b *DeviceBuffer) Tensor(off int64, dt compute.DType, n int) (compute.Tensor, error) {
	size := int64(dt.Size())
	if size == 0 {
		return compute.Tensor{}, fmt.Errorf("cuda: tensor of %s", dt)
	}
	if off < 0 || n < 0 || off%size != 0 || off > b.n || int64(n) > (b.n-off)/size || int64(n) > math.MaxInt32 {
		return compute.Tensor{}, fmt.Errorf("cuda: tensor of %d %s elements at byte %d of a %d-byte device buffer", n, dt, off, b.n)
	}
	return compute.NewTensor(&devMem{dev: b.dev, ptr: b.ptr + devptr(off), bytes: int64(n) * size}, dt, 0, n), nil
}

// Free returns the range to the arena. The caller must know that no op that uses it is still to be
// enqueued (the cache frees an expert once it is unpinned, after its last compute was issued); ops
// already enqueued may still be reading it on the device: the next CopyToDevice fences the copy
// stream behind them (Device.fence). Free is idempotent.
func (b *DeviceBuffer) Free() {
	if b.freed.Swap(true) {
		return
	}
	b.dev.frees.Add(1) // before the range can be handed out again
	b.dev.mu.RLock()
	defer b.dev.mu.RUnlock()
	if b.dev.arena != nil {
		b.dev.arena.release(b.off, b.n)
	}
}

// HostBuffer is pinned (page-locked) host memory: the only memory a DMA engine copies from
// asynchronously. Bytes is a Go slice over it, so a fetch reads from the socket straight into it.
type HostBuffer struct {
	dev   *Device
	p     unsafe.Pointer
	b     []byte
	freed atomic.Bool
}

// AllocHost returns n bytes of pinned host memory (cuMemHostAlloc).
func (d *Device) AllocHost(n int64) (*HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: pinned host alloc of %d bytes", n)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, ErrClosed
	}
	p, err := d.ctx.hostAlloc(n)
	if err != nil {
		return nil, err
	}
	return &HostBuffer{dev: d, p: p, b: unsafe.Slice((*byte)(p), n)}, nil
}

// Bytes is the pinned memory as a slice. It is valid until Free (or the device's Close).
func (h *HostBuffer) Bytes() []byte { return h.b }

// Free releases the pinned memory; no copy from it may be in flight (wait for its Event).
// Idempotent; after the device's Close it does nothing (the context took the memory with it).
func (h *HostBuffer) Free() {
	if h.freed.Swap(true) {
		return
	}
	h.b = nil
	h.dev.mu.RLock()
	defer h.dev.mu.RUnlock()
	if !h.dev.closed {
		_ = h.dev.ctx.hostFree(h.p) // fails only for a pointer cuMemHostAlloc did not return
	}
}

// Event is the completion of a copy on the copy stream. Done is closed by the device's waiter once
// the copy has completed (or failed); the compute stream can instead wait for it on the device
// (Backend.WaitEvent), without the host blocking.
type Event struct {
	done chan struct{}
	err  error

	dev  *Device
	mu   sync.Mutex // guards ev and live against complete
	ev   event
	live bool // ev is recorded and not yet destroyed
}

// Done is closed once the copy has completed.
func (e *Event) Done() <-chan struct{} { return e.done }

// Err is the copy's error, valid once Done is closed.
func (e *Event) Err() error { return e.err }

func failedEvent(err error) *Event {
	e := &Event{done: make(chan struct{}), err: err}
	close(e.done)
	return e
}

// complete records the copy's outcome, destroys the CUevent (nothing can wait on it afterwards:
// WaitEvent sees live false) and closes Done.
func (e *Event) complete(err error) {
	e.mu.Lock()
	if e.live {
		if derr := e.dev.ctx.destroyEvent(e.ev); err == nil {
			err = derr
		}
		e.live = false
	}
	e.err = err
	e.mu.Unlock()
	close(e.done)
}

// CopyToDevice enqueues a copy of src[:n] into dst[:n] on the copy stream and returns the Event
// that completes with it. It does not block on the copy. src must not change, and neither buffer be
// freed, until the Event is done.
func (d *Device) CopyToDevice(dst *DeviceBuffer, src *HostBuffer, n int64) *Event {
	if n < 0 || n > dst.n || n > int64(len(src.b)) {
		return failedEvent(fmt.Errorf("cuda: copy of %d bytes into %d from %d", n, dst.n, len(src.b)))
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return failedEvent(ErrClosed)
	}
	ev, err := d.ctx.newEvent(false)
	if err != nil {
		return failedEvent(err)
	}
	e := &Event{done: make(chan struct{}), dev: d, ev: ev, live: true}
	d.copyMu.Lock()
	defer d.copyMu.Unlock()
	if f := d.frees.Load(); f != d.fenced {
		// A buffer was freed since the last fence, perhaps this one's memory: the copy waits for
		// the compute enqueued until now, which includes every read of it.
		err = d.ctx.record(d.fence, d.compute)
		if err == nil {
			err = d.ctx.waitEvent(d.copies, d.fence)
		}
		if err == nil {
			d.fenced = f
		}
	}
	if n > 0 && err == nil {
		err = d.ctx.copyHtoD(dst.ptr, src.p, n, d.copies)
	}
	if err == nil {
		err = d.ctx.record(ev, d.copies)
	}
	if err != nil {
		e.complete(err)
		return e
	}
	d.waits <- e
	return e
}

// errCopyFailed wraps the error of a copy that a kernel was to wait for.
var errCopyFailed = errors.New("cuda: the expert's copy failed")
