package compute

import (
	"cmp"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// minParWork is the number of multiply-adds (m·k·n) below which a MatMulT is
// executed on the calling goroutine alone: handing work to a worker costs
// ~1µs when it is spinning and tens of µs when it has parked, more than such a
// small product takes.
// A variable so tests can force the parallel path on tiny shapes.
var minParWork = 1 << 17

// CPU is the CPU compute device. The number of threads is fixed at
// construction.
//
// Concurrency: the methods of a CPU may be called from one goroutine at a time
// (the engine is single-threaded per model). The CPU owns a pool of
// Threads()-1 persistent worker goroutines; the calling goroutine runs the
// first chunk of every op itself. Dispatch is one compare-and-swap on each
// worker's mailbox (~0.2µs round trip for an empty ParallelFor), not a
// goroutine spawn per op: after each op the workers busy-wait for the next one for up to 200µs
// (yielding to the Go scheduler now and then) before parking, so back-to-back
// ops of a forward pass find them awake; an idle CPU costs nothing. Calling a
// CPU method from inside a ParallelFor body, or from two goroutines at once,
// panics.
// Close stops and waits for the workers; it is idempotent, and a closed CPU
// still works, single-threaded.
type CPU struct {
	p    *pool
	free freeList // host tensors freed by the engine, for its next Alloc (cpu_backend.go)
}

// pool is everything the worker goroutines touch. It is separate from CPU so
// that a CPU that is dropped without Close can still be collected: a cleanup
// attached to the CPU then stops the workers.
type pool struct {
	threads int
	yield   bool // spinning yields the P now and then (spinUntil); false when the threads are raised
	workers []*worker
	wg      sync.WaitGroup

	closeOnce sync.Once
	closed    bool
	busy      atomic.Bool

	// Completion of the op in flight: the number of unfinished worker chunks
	// and whether the caller has parked, in one word (see pending). A worker
	// that finishes the last chunk of a parked caller sends on done.
	pending pending
	done    chan struct{}

	// State of the op in flight. Written by the caller before the workers'
	// mailboxes are bumped (atomics order it before the workers' reads).
	task   func(t, lo, hi int)
	bounds []int // chunk t covers [bounds[t], bounds[t+1])

	// Arguments of the MatMulT / MatMulTBF16 in flight, and pre-bound task
	// functions so that dispatching them allocates nothing.
	mm       mmArgs
	mmTask   func(t, lo, hi int)
	bf16Task func(t, lo, hi int)
	userFn   func(lo, hi int)
	userTask func(t, lo, hi int)

	scratch [][]float32 // per chunk index, for MatMulTBF16
}

// The wake-up protocol. A party that waits (a worker for its next chunk, the
// caller for the workers) spins for spinWindow and then parks on a channel,
// and the party it waits for must send on that channel exactly when it parked.
// Both use the same rule: whether the waiter has parked is a bit in the very
// word that the other party changes to signal it (the worker's sequence
// number, the caller's count of pending chunks), set by the waiter with a
// compare-and-swap that succeeds only if nothing was signalled since it last
// looked, and read by the signaller in the same atomic step as its signal. A
// signaller therefore sends if and only if the waiter is parked waiting for
// that very signal.
//
// The protocol this replaced kept the bit in a separate atomic.Bool, and the
// signaller read it after its signal: a signaller that was descheduled between
// the two (the OS preempting its thread, for longer than the waiter's spin)
// found the bit set by the waiter's *next* wait and sent a wake-up that
// belonged to nothing. A worker then ran a chunk that had not been posted, or
// a caller returned from an op whose chunks were still running; the counts
// went wrong and the next ops hung (docs/ARCHITECTURE.md, "The compute pool").

// worker is one persistent worker goroutine's mailbox. The caller posts chunk
// index t by storing it and bumping the sequence number in state. The worker
// spins on state for up to spinWindow after its last chunk, then parks on
// wake.
//
// Spinning matters: waking a parked goroutine whose OS thread (and, in a VM,
// whose vCPU) has gone idle was measured at ~80µs on the 2-vCPU benchmark
// machine, a third of a whole 768×3072 GEMV. A transformer step issues its
// matmuls microseconds apart, so workers that spin for a little while after
// each op start the next one within ~1µs.
type worker struct {
	// state is seq<<1 | parked: seq counts the chunks posted; parked is set by
	// the worker (only while it has run every posted chunk) before it blocks
	// on wake, and cleared by the post that bumps seq, which then sends.
	state atomic.Uint64
	t     int // chunk to run; -1 = exit
	wake  chan struct{}
	_     [64]byte // keep hot atomics of different workers on different cache lines
}

// spinWindow is how long workers (and a waiting caller) busy-wait before
// parking. Long enough to bridge the serial kernels between two matmuls of a
// forward pass, short enough that an idle CPU stops burning cores promptly.
// A variable so that the stress test can make everyone park often.
var spinWindow = 200 * time.Microsecond

// yieldEvery: spinners call runtime.Gosched every yieldEvery·64 polls. Never
// yielding (a stranded goroutine then waits for the spinner's deadline) and
// yielding every 64 polls were both slower on the 2-thread GEMV.
const yieldEvery = 16

type mmArgs struct {
	dst, a  []float32
	w       []float32
	wb      []uint16
	m, k, n int
	splitN  bool
	beta    float32
	kind    bf16Kernel // MatMulTBF16's kernel, read once per op
}

// NewCPU returns a CPU device using the given number of threads (including
// the caller's); threads <= 0 means runtime.NumCPU().
func NewCPU(threads int) *CPU {
	c, _ := NewCPUConfig(CPUConfig{Threads: threads})
	return c
}

// CPUConfig configures a CPU device.
type CPUConfig struct {
	// Threads computes, the calling goroutine's included; <= 0: runtime.NumCPU().
	Threads int
	// Priority is given to the worker threads of the pool (Raise) when they leave a core to
	// the rest of the process (CheckPriority); the goroutine that calls the CPU's methods raises its
	// own thread.
	Priority Priority
}

// NewCPUConfig returns a CPU device configured by cfg. The CPU always works: a non-nil error
// says only that its worker threads could not be given cfg.Priority and kept theirs.
func NewCPUConfig(cfg CPUConfig) (*CPU, error) {
	threads := cfg.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	prio, err := cfg.Priority, leavesACore(cfg.Priority, threads)
	if err != nil {
		prio = PriorityNormal
	}
	backendInit()
	p := &pool{
		threads: threads,
		bounds:  make([]int, threads+1),
		scratch: make([][]float32, threads),
		done:    make(chan struct{}, 1),
	}
	p.mmTask = p.runMatMulT
	p.bf16Task = p.runMatMulTBF16
	p.userTask = func(_, lo, hi int) { p.userFn(lo, hi) }
	p.workers = make([]*worker, threads-1)
	raised, start := make(chan error, len(p.workers)), make(chan struct{})
	for i := range p.workers {
		w := &worker{wake: make(chan struct{}, 1)}
		p.workers[i] = w
		p.wg.Add(1)
		go func() {
			r, err := Raise(prio)
			defer r.Release()
			raised <- err
			<-start // p.yield is set
			p.work(w)
		}()
	}
	for range p.workers {
		err = cmp.Or(err, <-raised)
	}
	// Raised threads are locked to their goroutines, and a locked goroutine that yields costs two
	// thread switches (its thread stops, another hands it the P back): with a core left to the
	// rest of the process their spinning need not yield. Measured: a block's compute 0.89 ms with
	// yields against 0.42 without, 2 threads.
	p.yield = prio == PriorityNormal || err != nil
	close(start)
	c := &CPU{p: p}
	runtime.AddCleanup(c, func(p *pool) { p.close() }, p)
	return c, err
}

// Threads reports the number of threads the CPU computes with.
func (c *CPU) Threads() int { return c.p.threads }

// Close stops the worker goroutines and waits for them to exit. It is
// idempotent. Ops issued after Close run on the calling goroutine alone.
func (c *CPU) Close() { c.p.close() }

func (p *pool) close() {
	p.closeOnce.Do(func() {
		p.closed = true
		for _, w := range p.workers {
			p.post(w, -1)
		}
		p.wg.Wait()
	})
}

// post hands chunk t to worker w, waking it if it has parked.
func (p *pool) post(w *worker, t int) {
	w.t = t
	for {
		s := w.state.Load()
		if w.state.CompareAndSwap(s, (s+2)&^1) {
			if s&1 != 0 {
				w.wake <- struct{}{}
			}
			return
		}
	}
}

// spinUntil busy-waits until cond() holds or spinWindow has passed, and
// reports whether cond() held. With yield it yields the P now and then so that
// it cannot starve other goroutines when GOMAXPROCS < threads.
func spinUntil(cond func() bool, yield bool) bool {
	var deadline time.Time
	for i := 0; ; i++ {
		for j := 0; j < 64; j++ {
			if cond() {
				return true
			}
		}
		if i == 0 {
			deadline = time.Now().Add(spinWindow)
		} else if time.Now().After(deadline) {
			return cond()
		}
		if yield && i%yieldEvery == yieldEvery-1 {
			runtime.Gosched()
		}
	}
}

func (p *pool) work(w *worker) {
	defer p.wg.Done()
	var seen uint64 // state (seq<<1) once every posted chunk has run
	posted := func() bool { return w.state.Load() != seen }
	for {
		// Park only if nothing was posted since the last chunk: the CAS fails
		// otherwise, and then there is a chunk to run.
		if !spinUntil(posted, p.yield) && w.state.CompareAndSwap(seen, seen|1) {
			<-w.wake
		}
		seen += 2
		t := w.t
		if t < 0 {
			return
		}
		p.task(t, p.bounds[t], p.bounds[t+1])
		if p.pending.finish() {
			p.done <- struct{}{}
		}
	}
}

// pending counts the unfinished worker chunks of the op in flight, in one
// word with the caller's parked bit: chunks<<1 | parked.
type pending struct{ v atomic.Uint64 }

// start sets the count for a new op (nobody else touches it between ops).
func (c *pending) start(chunks int) { c.v.Store(uint64(chunks) << 1) }

// finish counts one chunk done and reports whether it was the last one and
// the caller has parked, in which case the caller must be woken.
func (c *pending) finish() bool {
	for {
		s := c.v.Load()
		n := s - 2
		wake := n == 1 // no chunk left, caller parked
		if wake {
			n = 0
		}
		if c.v.CompareAndSwap(s, n) {
			return wake
		}
	}
}

// wait blocks until all worker chunks of the op in flight are done: it spins
// first, then parks unless they finished meanwhile (same protocol as the
// workers', mirrored).
func (p *pool) wait() {
	if spinUntil(func() bool { return p.pending.v.Load() == 0 }, p.yield) {
		return
	}
	for {
		s := p.pending.v.Load()
		if s == 0 {
			return
		}
		if p.pending.v.CompareAndSwap(s, s|1) {
			<-p.done
			return
		}
	}
}

// acquire marks the pool busy, catching concurrent or re-entrant use, which
// would otherwise corrupt the op state silently.
func (p *pool) acquire() {
	if !p.busy.CompareAndSwap(false, true) {
		panic("compute: CPU used concurrently or re-entrantly (from inside a ParallelFor body?); use the serial functions there")
	}
}

// release ends the op. It takes the CPU to keep it reachable until then: the
// cleanup that closes an unreachable CPU's pool must not run while one of its
// ops is in flight (a method's receiver is dead after its last use, so a CPU
// whose caller drops it during its last op would otherwise be closed under it).
func (p *pool) release(c *CPU) {
	p.busy.Store(false)
	runtime.KeepAlive(c)
}

// run executes task over chunks 0..parts-1 whose bounds are already in
// p.bounds: chunks 1.. on the workers, chunk 0 on the caller, and waits for
// all. The caller must hold the pool (acquire).
func (p *pool) run(parts int, task func(t, lo, hi int)) {
	if parts <= 1 || p.closed {
		// Serial fallback: run all chunks in order on the caller.
		for t := 0; t < parts; t++ {
			task(t, p.bounds[t], p.bounds[t+1])
		}
		return
	}
	p.task = task
	p.pending.start(parts - 1)
	for t := 1; t < parts; t++ {
		p.post(p.workers[t-1], t)
	}
	// Wait even when chunk 0 panics: the workers still use p's state.
	defer p.wait()
	task(0, p.bounds[0], p.bounds[1])
}

// split fills p.bounds with parts contiguous chunks of [0,n) whose inner
// boundaries are multiples of align (when that leaves every chunk non-empty).
func (p *pool) split(n, parts, align int) {
	if align > 1 && n/align < parts {
		align = 1
	}
	units := (n + align - 1) / align
	p.bounds[0] = 0
	for t := 1; t < parts; t++ {
		b := (units * t / parts) * align
		p.bounds[t] = min(b, n)
	}
	p.bounds[parts] = n
}

// ParallelFor splits [0,n) into at most Threads contiguous chunks, runs fn on
// each (chunk 0 on the calling goroutine, the others on the workers) and waits
// for all of them. fn must not call methods of the same CPU. A panic in fn on
// a worker goroutine crashes the program, as in any goroutine.
func (c *CPU) ParallelFor(n int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	p := c.p
	parts := min(p.threads, n)
	if parts == 1 {
		fn(0, n)
		return
	}
	p.acquire()
	defer p.release(c)
	p.split(n, parts, 1)
	p.userFn = fn
	p.run(parts, p.userTask)
	p.userFn = nil
}

func checkMatMul(dst, a []float32, m, k int, wlen, n int) {
	if m < 0 || k < 0 || n < 0 {
		panic(fmt.Sprintf("compute: negative dimension m=%d k=%d n=%d", m, k, n))
	}
	if len(a) < m*k || wlen < n*k || len(dst) < m*n {
		panic(fmt.Sprintf("compute: MatMulT size mismatch: m=%d k=%d n=%d but len(dst)=%d len(a)=%d len(w)=%d",
			m, k, n, len(dst), len(a), wlen))
	}
	checkBLASDims(m, k, n)
}

// plan chooses how to parallelise an m×k·(n×k)ᵀ product: how many chunks, and
// whether over the output features n (the default: each thread streams its
// own contiguous block of weight rows) or over the rows m (when n is too small
// to give every thread a decent block, e.g. a router with 8 experts).
func (p *pool) plan(m, k, n int) (parts int, splitN bool) {
	t := p.threads
	if t == 1 || p.closed || m*k*n < minParWork {
		return 1, true
	}
	switch {
	case n >= 16*t:
		return t, true
	case m >= t && m >= n:
		return t, false
	case n >= m:
		return min(t, n), true
	default:
		return min(t, m), false
	}
}

// MatMulT computes dst[m×n] = a[m×k] · w[n×k]ᵀ (row-major; w in nn.Linear
// layout [out_features, in_features]). With accumulate, dst += a·wᵀ instead.
// The output features are split across the CPU's threads.
func (c *CPU) MatMulT(dst, a []float32, m, k int, w []float32, n int, accumulate bool) {
	checkMatMul(dst, a, m, k, len(w), n)
	beta, done := prologue(dst, m, k, n, accumulate)
	if done {
		return
	}
	p := c.p
	parts, splitN := p.plan(m, k, n)
	if parts == 1 {
		if p.threads > 1 || !gemvWhole(dst, a, m, k, w, n, beta) {
			gemmNT(dst, a, m, k, w, n, n, beta)
		}
		return
	}
	p.acquire()
	defer p.release(c)
	if splitN {
		align := 1
		if n >= 64*parts {
			align = 16
		}
		p.split(n, parts, align)
	} else {
		p.split(m, parts, 1)
	}
	p.mm = mmArgs{dst: dst, a: a, w: w, m: m, k: k, n: n, splitN: splitN, beta: beta}
	p.run(parts, p.mmTask)
	p.mm = mmArgs{}
}

func (p *pool) runMatMulT(_, lo, hi int) {
	mm := &p.mm
	if hi <= lo {
		return
	}
	if mm.splitN {
		gemmNT(mm.dst[lo:], mm.a, mm.m, mm.k, mm.w[lo*mm.k:], hi-lo, mm.n, mm.beta)
	} else {
		gemmNT(mm.dst[lo*mm.n:], mm.a[lo*mm.k:], hi-lo, mm.k, mm.w, mm.n, mm.n, mm.beta)
	}
}

// MatMulTSerial is MatMulT on the calling goroutine alone. Unlike the CPU
// methods it is reentrant: use it inside ParallelFor bodies (e.g. attention
// per head).
func MatMulTSerial(dst, a []float32, m, k int, w []float32, n int, accumulate bool) {
	checkMatMul(dst, a, m, k, len(w), n)
	beta, done := prologue(dst, m, k, n, accumulate)
	if done {
		return
	}
	backendInit()
	gemmNT(dst, a, m, k, w, n, n, beta)
}

// MatMul computes dst[m×n] = a[m×k] · b[k×n] (all row-major) on the calling
// goroutine, or dst += a·b with accumulate. Reentrant, like MatMulTSerial
// (meant for attention: probs·V).
func MatMul(dst, a, b []float32, m, k, n int, accumulate bool) {
	if m < 0 || k < 0 || n < 0 {
		panic(fmt.Sprintf("compute: negative dimension m=%d k=%d n=%d", m, k, n))
	}
	if len(a) < m*k || len(b) < k*n || len(dst) < m*n {
		panic(fmt.Sprintf("compute: MatMul size mismatch: m=%d k=%d n=%d but len(dst)=%d len(a)=%d len(b)=%d",
			m, k, n, len(dst), len(a), len(b)))
	}
	checkBLASDims(m, k, n)
	beta, done := prologue(dst, m, k, n, accumulate)
	if done {
		return
	}
	backendInit()
	gemmNN(dst, a, b, m, k, n, beta)
}

// prologue handles the shapes with nothing to multiply (dst is cleared, or left alone when
// accumulating) and otherwise returns the BLAS beta: 1 to accumulate, 0 to overwrite.
func prologue(dst []float32, m, k, n int, accumulate bool) (beta float32, done bool) {
	if m == 0 || n == 0 {
		return 0, true
	}
	if k == 0 {
		if !accumulate {
			clear(dst[:m*n])
		}
		return 0, true
	}
	if accumulate {
		return 1, false
	}
	return 0, false
}
