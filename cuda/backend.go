//go:build cuda

package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"unsafe"

	"github.com/pregate/pregate/compute"
)

// Backend is the device's compute.Backend: every op is a kernel launch (or a copy) on the compute
// stream, in issue order, and returns at once. Failures are sticky: the first is returned by the
// next Sync or Download (and by every one after it; a context that faulted stays unusable).
//
// Memory. Alloc takes device memory from a free list by size class (a freed tensor's memory is
// reused by the next Alloc of its class: reuse is safe without a sync because every op runs on the
// one stream, in order) or from cuMemAlloc; Const and ConstBF16 allocate exactly and live until
// Close. Small host arguments (token ids, row indexes, per-row weights) go through one device
// argument buffer: copied from host memory on the stream (the driver stages pageable memory before
// returning, so the caller may reuse its slice at once) just before the kernel that reads them.
//
// Ops are issued by one goroutine at a time (compute.Backend's rule); nothing here locks.
type Backend struct {
	d   *Device
	ctx ctx
	s   stream
	k   *kernels

	p   params // the launch being built
	err error  // the first failure (sticky)

	pool   map[int64][]devptr // free device memory by size class
	pooled int64
	live   map[devptr]int64 // Alloc'd and not freed, with its class
	consts []devptr

	args     devptr // the argument buffer
	argsCap  int64
	argsHost []byte
}

var _ compute.Backend = (*Backend)(nil)

// maxPooled bounds the freed memory the backend keeps for reuse; beyond it Free returns memory to
// the driver.
const maxPooled = 4 << 30

func newBackend(d *Device) *Backend {
	return &Backend{d: d, ctx: d.ctx, s: d.compute, k: &d.k, pool: map[int64][]devptr{}, live: map[devptr]int64{}}
}

// release frees all the backend's memory (the device is closing; the stream has drained).
func (b *Backend) release() error {
	var errs []error
	for p := range b.live {
		errs = append(errs, b.ctx.memFree(p))
	}
	for _, ps := range b.pool {
		for _, p := range ps {
			errs = append(errs, b.ctx.memFree(p))
		}
	}
	for _, p := range b.consts {
		errs = append(errs, b.ctx.memFree(p))
	}
	if b.args != 0 {
		errs = append(errs, b.ctx.memFree(b.args))
	}
	b.live, b.pool, b.consts, b.args = map[devptr]int64{}, map[int64][]devptr{}, nil, 0
	return errors.Join(errs...)
}

// devMem is device memory behind compute.Tensors: a Backend allocation (class > 0), a Const, or a
// range of the expert arena (DeviceBuffer.Tensor).
type devMem struct {
	dev   *Device
	ptr   devptr
	bytes int64
	class int64 // the Alloc size class in bytes; 0 for memory Free does not take back
	freed bool
}

// Bytes implements compute.Memory.
func (m *devMem) Bytes() int64 { return m.bytes }

// Name implements compute.Backend.
func (b *Backend) Name() string { return b.d.name }

// fail records err as the sticky failure if it is the first.
func (b *Backend) fail(err error) {
	if err != nil && b.err == nil {
		b.err = err
	}
}

// sizeClass rounds n bytes up to one of four classes per power of two (at most 25% over), at
// least 256 bytes: activations of varying token counts then share a few classes.
func sizeClass(n int64) int64 {
	if n <= 256 {
		return 256
	}
	step := int64(1) << max(bits.Len64(uint64(n-1))-3, 8)
	return (n + step - 1) / step * step
}

// Alloc implements compute.Backend.
func (b *Backend) Alloc(dt compute.DType, n int) (compute.Tensor, error) {
	if n < 0 || dt.Size() == 0 || int64(n) > math.MaxInt32 {
		return compute.Tensor{}, fmt.Errorf("cuda: alloc of %d elements of %s", n, dt)
	}
	bytes := int64(n) * int64(dt.Size())
	class := sizeClass(bytes)
	var p devptr
	if free := b.pool[class]; len(free) > 0 {
		p = free[len(free)-1]
		b.pool[class] = free[:len(free)-1]
		b.pooled -= class
	} else {
		var err error
		p, err = b.ctx.memAlloc(class)
		if errors.Is(err, ErrOutOfMemory) && b.pooled > 0 {
			// Give the pool back to the driver and try once more.
			if err = b.trim(); err == nil {
				p, err = b.ctx.memAlloc(class)
			}
		}
		if err != nil {
			return compute.Tensor{}, err
		}
	}
	b.live[p] = class
	// Zeroed on the stream: after every op issued before, which may still be using a pooled range.
	if bytes > 0 {
		b.fail(b.ctx.memset32(p, 0, (bytes+3)/4, b.s))
	}
	return compute.NewTensor(&devMem{dev: b.d, ptr: p, bytes: bytes, class: class}, dt, 0, n), nil
}

// trim frees the pooled memory (after the stream drains: a pooled range may still be in use by an
// op in flight).
func (b *Backend) trim() error {
	if err := b.ctx.syncStream(b.s); err != nil {
		return err
	}
	var errs []error
	for c, ps := range b.pool {
		for _, p := range ps {
			errs = append(errs, b.ctx.memFree(p))
		}
		delete(b.pool, c)
	}
	b.pooled = 0
	return errors.Join(errs...)
}

// Free implements compute.Backend.
func (b *Backend) Free(t compute.Tensor) {
	m, ok := t.Memory().(*devMem)
	if !ok || m.class == 0 || m.freed {
		return
	}
	m.freed = true
	delete(b.live, m.ptr)
	if b.pooled+m.class > maxPooled {
		// Ops in flight may still use it.
		b.fail(b.ctx.syncStream(b.s))
		b.fail(b.ctx.memFree(m.ptr))
		return
	}
	b.pool[m.class] = append(b.pool[m.class], m.ptr)
	b.pooled += m.class
}

// Const implements compute.Backend.
func (b *Backend) Const(host []float32) (compute.Tensor, error) {
	return b.constant(compute.F32, unsafe.Pointer(unsafe.SliceData(host)), len(host))
}

// ConstBF16 implements compute.Backend.
func (b *Backend) ConstBF16(host []uint16) (compute.Tensor, error) {
	return b.constant(compute.BF16, unsafe.Pointer(unsafe.SliceData(host)), len(host))
}

func (b *Backend) constant(dt compute.DType, host unsafe.Pointer, n int) (compute.Tensor, error) {
	if int64(n) > math.MaxInt32 {
		return compute.Tensor{}, fmt.Errorf("cuda: constant of %d elements (the kernels index with 32 bits)", n)
	}
	bytes := int64(n) * int64(dt.Size())
	var p devptr
	if bytes > 0 {
		var err error
		if p, err = b.ctx.memAlloc(bytes); err != nil {
			return compute.Tensor{}, fmt.Errorf("cuda: constant of %d %s elements: %w", n, dt, err)
		}
		b.consts = append(b.consts, p)
		if err := b.ctx.copyHtoD(p, host, bytes, b.s); err != nil {
			return compute.Tensor{}, err
		}
	}
	return compute.NewTensor(&devMem{dev: b.d, ptr: p, bytes: bytes}, dt, 0, n), nil
}

// addr is the device address of t's first element. t must be memory of this device, of dtype dt
// (0: either dtype).
func (b *Backend) addr(op string, t compute.Tensor, dt compute.DType) devptr {
	m, ok := t.Memory().(*devMem)
	if !ok || m.dev != b.d {
		panic(fmt.Sprintf("cuda: %s on %s wants a tensor of this device, got %T", op, b.d.name, t.Memory()))
	}
	if dt != 0 && t.DType() != dt {
		panic(fmt.Sprintf("cuda: %s wants %s, got a %s tensor", op, dt, t.DType()))
	}
	return m.ptr + devptr(t.ByteOffset())
}

// f32 is addr for float32 tensors with at least n elements.
func (b *Backend) f32(op string, t compute.Tensor, n int) devptr {
	checkLen(op, t, n)
	return b.addr(op, t, compute.F32)
}

func checkLen(op string, t compute.Tensor, n int) {
	if t.Len() < n {
		panic(fmt.Sprintf("cuda: %s wants %d elements, the tensor has %d", op, n, t.Len()))
	}
}

// Upload implements compute.Backend.
func (b *Backend) Upload(dst compute.Tensor, src []float32) {
	if len(src) != dst.Len() {
		panic(fmt.Sprintf("cuda: upload of %d elements into %d", len(src), dst.Len()))
	}
	p := b.f32("Upload", dst, len(src))
	if len(src) > 0 {
		b.fail(b.ctx.copyHtoD(p, unsafe.Pointer(&src[0]), int64(len(src))*4, b.s))
	}
}

// Download implements compute.Backend.
func (b *Backend) Download(dst []float32, src compute.Tensor) error {
	if len(dst) != src.Len() {
		panic(fmt.Sprintf("cuda: download of %d elements into %d", src.Len(), len(dst)))
	}
	p := b.f32("Download", src, len(dst))
	if b.err == nil && len(dst) > 0 {
		b.fail(b.ctx.copyDtoH(unsafe.Pointer(&dst[0]), p, int64(len(dst))*4, b.s))
	}
	return b.Sync()
}

// Sync implements compute.Backend.
func (b *Backend) Sync() error {
	b.fail(b.ctx.syncStream(b.s))
	return b.err
}

// WaitEvent is Device.WaitEvent.
func (b *Backend) WaitEvent(ev *Event) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.live {
		b.fail(b.ctx.waitEvent(b.s, ev.ev))
		return
	}
	// Completed: nothing to wait for, unless it failed. (Done is closed just after live turns
	// false; err was set before.)
	if ev.err != nil {
		b.fail(fmt.Errorf("%w: %v", errCopyFailed, ev.err))
	}
}

// Copy implements compute.Backend.
func (b *Backend) Copy(dst, src compute.Tensor) {
	if dst.DType() != src.DType() || dst.Len() != src.Len() {
		panic(fmt.Sprintf("cuda: copy of %s[%d] into %s[%d]", src.DType(), src.Len(), dst.DType(), dst.Len()))
	}
	d, s := b.addr("Copy", dst, 0), b.addr("Copy", src, 0)
	if n := dst.Bytes(); n > 0 {
		b.fail(b.ctx.copyDtoD(d, s, n, b.s))
	}
}

// launch enqueues f with the parameters built in b.p.
func (b *Backend) launch(f function, grid, block dim3, shmem uint32) {
	b.fail(b.ctx.launch(f, grid, block, shmem, b.s, &b.p))
}

// elementGrid is the grid of a grid-stride kernel over n elements.
func (b *Backend) elementGrid(n int) dim3 {
	blocks := min((n+elementThreads-1)/elementThreads, b.d.sms*32)
	return dim3{uint32(blocks), 1, 1}
}

// uploadArgs copies the int32 rows and float32 weights of one op into the argument buffer, on the
// stream, and returns their device addresses (weights follows rows).
func (b *Backend) uploadArgs(op string, rows []int, limit int, weights []float32) (devptr, devptr) {
	n := int64(len(rows)+len(weights)) * 4
	buf := b.argsHost[:0]
	for i, r := range rows {
		if r < 0 || r >= limit {
			panic(fmt.Sprintf("cuda: %s index %d is %d, out of range [0, %d)", op, i, r, limit))
		}
		buf = binary.LittleEndian.AppendUint32(buf, uint32(r))
	}
	for _, w := range weights {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(w))
	}
	b.argsHost = buf
	if n > b.argsCap {
		if b.args != 0 {
			// Kernels in flight may still read the old buffer.
			b.fail(b.ctx.syncStream(b.s))
			b.fail(b.ctx.memFree(b.args))
			b.args, b.argsCap = 0, 0
		}
		c := max(sizeClass(n), 64<<10)
		p, err := b.ctx.memAlloc(c)
		if err != nil {
			b.fail(err)
			return 0, 0
		}
		b.args, b.argsCap = p, c
	}
	if n > 0 {
		b.fail(b.ctx.copyHtoD(b.args, unsafe.Pointer(&buf[0]), n, b.s))
	}
	return b.args, b.args + devptr(4*len(rows))
}

// rowGrid is the grid of the row kernels (embed, gather_rows, scatter_add_rows): columns in x,
// rows in y (strided beyond 65535).
func rowGrid(d, count int) dim3 {
	return dim3{uint32((d + elementThreads - 1) / elementThreads), uint32(min(max(count, 1), maxGridY)), 1}
}

// GatherRows implements compute.Backend.
func (b *Backend) GatherRows(dst, src compute.Tensor, rows []int, d int) {
	dp := b.f32("GatherRows", dst, len(rows)*d)
	sp := b.f32("GatherRows", src, 0)
	if len(rows) == 0 || d == 0 {
		return
	}
	rp, _ := b.uploadArgs("GatherRows", rows, src.Len()/d, nil)
	if rp == 0 {
		return
	}
	b.p.reset().ptr(dp).ptr(sp).ptr(rp).i32(len(rows)).i32(d)
	b.launch(b.k.gather, rowGrid(d, len(rows)), dim3{elementThreads, 1, 1}, 0)
}

// ScatterAddRows implements compute.Backend.
func (b *Backend) ScatterAddRows(dst, src compute.Tensor, rows []int, weights []float32, d int) {
	if len(weights) != len(rows) {
		panic(fmt.Sprintf("cuda: ScatterAddRows with %d rows and %d weights", len(rows), len(weights)))
	}
	sp := b.f32("ScatterAddRows", src, len(rows)*d)
	dp := b.f32("ScatterAddRows", dst, 0)
	if len(rows) == 0 || d == 0 {
		return
	}
	rp, wp := b.uploadArgs("ScatterAddRows", rows, dst.Len()/d, weights)
	if rp == 0 {
		return
	}
	b.p.reset().ptr(dp).ptr(sp).ptr(rp).ptr(wp).i32(len(rows)).i32(d)
	b.launch(b.k.scatterAdd, dim3{uint32((d + elementThreads - 1) / elementThreads), 1, 1}, dim3{elementThreads, 1, 1}, 0)
}

// Embed implements compute.Backend.
func (b *Backend) Embed(dst, table compute.Tensor, ids []int, d int) {
	dp := b.f32("Embed", dst, len(ids)*d)
	tp := b.addr("Embed", table, 0)
	if len(ids) == 0 || d == 0 {
		return
	}
	ip, _ := b.uploadArgs("Embed", ids, table.Len()/d, nil)
	if ip == 0 {
		return
	}
	b.p.reset().ptr(dp).ptr(tp).i32(boolInt(table.DType() == compute.BF16)).ptr(ip).i32(len(ids)).i32(d)
	b.launch(b.k.embed, rowGrid(d, len(ids)), dim3{elementThreads, 1, 1}, 0)
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

// Linear implements compute.Backend: for m ≤ 8 the decode GEMV kernels (128-bit loads when the
// tensors are 16-byte aligned and k a multiple of 8, else one element per load), for larger m the
// tiled GEMM.
func (b *Backend) Linear(dst, x compute.Tensor, m, k int, w compute.Tensor, n int, accumulate bool) {
	dp := b.f32("Linear", dst, m*n)
	xp := b.f32("Linear", x, m*k)
	checkLen("Linear", w, n*k)
	wp := b.addr("Linear", w, 0)
	if m <= 0 || n <= 0 {
		return
	}
	if k == 0 {
		if !accumulate {
			b.fail(b.ctx.memset32(dp, 0, int64(m*n), b.s))
		}
		return
	}
	bf := w.DType() == compute.BF16
	acc := boolInt(accumulate)
	if m > gemvMaxM {
		f := b.k.gemmF32
		if bf {
			f = b.k.gemmBF16
		}
		b.p.reset().ptr(dp).ptr(xp).ptr(wp).i32(m).i32(k).i32(n).i32(acc)
		b.launch(f, dim3{uint32((n + gemmTile - 1) / gemmTile), uint32((m + gemmTile - 1) / gemmTile), 1}, dim3{256, 1, 1}, 0)
		return
	}
	vector := k%8 == 0 && wp%16 == 0 && xp%16 == 0
	if !vector {
		tpr := gemvGroup(n, k/8, b.d.sms)
		perBlock := gemvThreads / tpr
		b.p.reset().ptr(dp).ptr(xp).ptr(wp).i32(boolInt(bf)).i32(m).i32(k).i32(n).i32(acc)
		b.launch(b.k.gemvScalar, dim3{uint32((n + perBlock - 1) / perBlock), 1, 1}, dim3{uint32(tpr), uint32(perBlock), 1}, 0)
		return
	}
	groups := (n + gemvRows(m) - 1) / gemvRows(m)
	tpr := gemvGroup(groups, k/8, b.d.sms)
	perBlock := gemvThreads / tpr
	f := b.k.gemvF32[m]
	if bf {
		f = b.k.gemvBF16[m]
	}
	b.p.reset().ptr(dp).ptr(xp).ptr(wp).i32(k).i32(n).i32(acc)
	b.launch(f, dim3{uint32((groups + perBlock - 1) / perBlock), 1, 1}, dim3{uint32(tpr), uint32(perBlock), 1}, 0)
}

// gemvGroup is the number of threads (32 … 256) that share one group of output rows of a GEMV
// (groups of them, rows of chunks 8-element chunks): one warp when there are groups enough to fill
// the GPU with blocks (four of 256 threads per SM), more when the matrix is short, as long as each
// thread keeps at least two chunks per row.
func gemvGroup(groups, chunks, sms int) int {
	tpr := 32
	for tpr < gemvThreads && groups*tpr/gemvThreads < 4*sms && chunks >= 4*tpr {
		tpr *= 2
	}
	return tpr
}

// RMSNorm implements compute.Backend.
func (b *Backend) RMSNorm(dst, x compute.Tensor, rows, d int, w compute.Tensor, eps float32) {
	dp := b.f32("RMSNorm", dst, rows*d)
	xp := b.f32("RMSNorm", x, rows*d)
	wp := b.f32("RMSNorm", w, d)
	if rows <= 0 || d <= 0 {
		return
	}
	b.p.reset().ptr(dp).ptr(xp).ptr(wp).i32(d).f32(eps)
	b.launch(b.k.rmsnorm, dim3{uint32(rows), 1, 1}, dim3{rowThreads, 1, 1}, 0)
}

// Softmax implements compute.Backend.
func (b *Backend) Softmax(x compute.Tensor, rows, n int) {
	xp := b.f32("Softmax", x, rows*n)
	if rows <= 0 || n <= 0 {
		return
	}
	b.p.reset().ptr(xp).i32(n)
	b.launch(b.k.softmax, dim3{uint32(rows), 1, 1}, dim3{rowThreads, 1, 1}, 0)
}

// unary launches an in-place elementwise kernel over x.
func (b *Backend) unary(op string, f function, x compute.Tensor) {
	xp := b.f32(op, x, 0)
	if n := x.Len(); n > 0 {
		b.p.reset().ptr(xp).i32(n)
		b.launch(f, b.elementGrid(n), dim3{elementThreads, 1, 1}, 0)
	}
}

// ReLU implements compute.Backend.
func (b *Backend) ReLU(x compute.Tensor) { b.unary("ReLU", b.k.relu, x) }

// GELU implements compute.Backend.
func (b *Backend) GELU(x compute.Tensor) { b.unary("GELU", b.k.gelu, x) }

// SiLU implements compute.Backend.
func (b *Backend) SiLU(x compute.Tensor) { b.unary("SiLU", b.k.silu, x) }

// Mul implements compute.Backend.
func (b *Backend) Mul(dst, x, y compute.Tensor) {
	n := dst.Len()
	dp, xp, yp := b.f32("Mul", dst, n), b.f32("Mul", x, n), b.f32("Mul", y, n)
	if n > 0 {
		b.p.reset().ptr(dp).ptr(xp).ptr(yp).i32(n)
		b.launch(b.k.mul, b.elementGrid(n), dim3{elementThreads, 1, 1}, 0)
	}
}

// Add implements compute.Backend.
func (b *Backend) Add(dst, x compute.Tensor) {
	n := dst.Len()
	dp, xp := b.f32("Add", dst, n), b.f32("Add", x, n)
	if n > 0 {
		b.p.reset().ptr(dp).ptr(xp).i32(n)
		b.launch(b.k.add, b.elementGrid(n), dim3{elementThreads, 1, 1}, 0)
	}
}

// Scale implements compute.Backend.
func (b *Backend) Scale(x compute.Tensor, s float32) {
	xp := b.f32("Scale", x, 0)
	if n := x.Len(); n > 0 {
		b.p.reset().ptr(xp).f32(s).i32(n)
		b.launch(b.k.scale, b.elementGrid(n), dim3{elementThreads, 1, 1}, 0)
	}
}

// RoPE implements compute.Backend.
func (b *Backend) RoPE(x compute.Tensor, tokens, heads, headDim int, cos, sin compute.Tensor) {
	xp := b.f32("RoPE", x, tokens*heads*headDim)
	cp := b.f32("RoPE", cos, tokens*headDim/2)
	sp := b.f32("RoPE", sin, tokens*headDim/2)
	pairs := tokens * heads * (headDim / 2)
	if pairs <= 0 {
		return
	}
	b.p.reset().ptr(xp).ptr(cp).ptr(sp).i32(tokens).i32(heads).i32(headDim)
	b.launch(b.k.rope, b.elementGrid(pairs), dim3{elementThreads, 1, 1}, 0)
}

// Attention implements compute.Backend: one block of eight warps per (query, head).
func (b *Backend) Attention(out, q, k, v compute.Tensor, nq, nk int, a *compute.Attention) {
	qd, kd := a.Heads*a.HeadDim, a.KVHeads*a.HeadDim
	op := b.f32("Attention", out, nq*qd)
	qp := b.f32("Attention", q, nq*qd)
	kp := b.f32("Attention", k, nk*kd)
	vp := b.f32("Attention", v, nk*kd)
	if a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 {
		panic(fmt.Sprintf("cuda: attention with %d heads over %d KV heads", a.Heads, a.KVHeads))
	}
	var biasp, maskp devptr
	if !a.Bias.IsZero() {
		biasp = b.f32("Attention bias", a.Bias, (2*a.BiasReach+1)*a.Heads)
	}
	if !a.Mask.IsZero() {
		maskp = b.f32("Attention mask", a.Mask, nk)
	}
	if a.HeadDim > attMaxHeadDim {
		b.fail(fmt.Errorf("cuda: attention head dim %d: the kernel supports up to %d", a.HeadDim, attMaxHeadDim))
		return
	}
	if nq <= 0 || a.Heads <= 0 || a.HeadDim <= 0 {
		return
	}
	b.p.reset().ptr(op).ptr(qp).ptr(kp).ptr(vp).ptr(biasp).ptr(maskp).
		i32(nq).i32(nk).i32(a.Heads).i32(a.KVHeads).i32(a.HeadDim).f32(a.Scale).
		i32(boolInt(a.Causal)).i32(a.Past).i32(a.Window).i32(a.BiasReach)
	if a.Heads > maxGridY {
		panic(fmt.Sprintf("cuda: attention with %d heads", a.Heads))
	}
	b.launch(b.k.attention, dim3{uint32(nq), uint32(a.Heads), 1}, dim3{attWarps * 32, 1, 1}, 0)
}
