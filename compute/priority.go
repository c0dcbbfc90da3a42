package compute

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
)

// Priority is the scheduling priority of the threads that compute: the levels of llama.cpp's
// --prio (normal, medium, high: nice 0, -5, -10 on Linux). A worker's compute shares the cores
// with its fetch path (receiving, checking and staging experts) and, on one host, with stores:
// above normal, the compute threads get the cores first and the fetch path the time they leave,
// the way a GPU's compute is not slowed by the host's network work. Raising a thread needs
// CAP_SYS_NICE or an RLIMIT_NICE that allows it; CheckPriority says whether it can be had.
type Priority int

const (
	PriorityNormal Priority = iota
	PriorityMedium
	PriorityHigh
)

var priorityNames = [...]string{"normal", "medium", "high"}

// ParsePriority reads a Priority by name.
func ParsePriority(s string) (Priority, error) {
	for i, n := range priorityNames {
		if s == n {
			return Priority(i), nil
		}
	}
	return 0, fmt.Errorf("compute: priority %q: want normal, medium or high", s)
}

func (p Priority) String() string {
	if p < 0 || int(p) >= len(priorityNames) {
		return fmt.Sprintf("Priority(%d)", int(p))
	}
	return priorityNames[p]
}

// Nice is the thread's nice value at p (Linux: -20 highest, 19 lowest).
func (p Priority) Nice() int {
	switch p {
	case PriorityMedium:
		return -5
	case PriorityHigh:
		return -10
	}
	return 0
}

// raiseThread gives the calling goroutine's OS thread priority p and locks the goroutine to it.
// On failure the goroutine is left unlocked and the thread as it was.
func raiseThread(p Priority) error {
	runtime.LockOSThread()
	if err := setThreadNice(p.Nice()); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("compute: %s priority (nice %d) for the compute threads: %w", p, p.Nice(), err)
	}
	return nil
}

// Raised is a goroutine's raised thread (Raise). The goroutine lets go of it while it blocks
// (Pause): a goroutine locked to its thread pays two thread switches each time it is woken (its
// thread sleeps, and whoever wakes it hands it a P), which a worker waiting for an expert would
// add to every stall (BenchmarkRaisedWake). It releases it before it ends (Release), so that the
// thread goes back to the runtime at normal priority: a goroutine that ended locked would have the
// runtime end its thread, or wedge it for good when it is the process's main thread.
type Raised struct {
	p   Priority
	tid atomic.Int64 // the raised thread while held; 0 while let go
}

// Raise locks the calling goroutine to its OS thread and gives that thread priority p, until
// Release. At PriorityNormal it does nothing and returns nil, as on failure; a nil Raised's
// methods do nothing.
func Raise(p Priority) (*Raised, error) {
	if p == PriorityNormal {
		return nil, nil
	}
	if err := raiseThread(p); err != nil {
		return nil, err
	}
	r := &Raised{p: p}
	r.tid.Store(int64(gettid()))
	return r, nil
}

// letGo lowers the raised thread back to normal and unlocks it, when the caller runs on it (only
// the raised goroutine does); it reports whether it did.
func (r *Raised) letGo() bool {
	if r == nil {
		return false
	}
	tid := r.tid.Load()
	if tid == 0 || int64(gettid()) != tid {
		return false
	}
	if setThreadNice(0) != nil { // lowering needs no right; should it fail, stay as we are
		return false
	}
	r.tid.Store(0)
	runtime.UnlockOSThread()
	return true
}

// Release gives the raised thread back at normal priority; the goroutine runs on as any other.
// Called from another goroutine, or twice, it does nothing.
func (r *Raised) Release() { r.letGo() }

// Pause, called by the raised goroutine before it blocks, lowers its thread back to normal and
// unlocks it; the function it returns, called once the goroutine runs again, locks the thread it
// then runs on and raises that one. Called from any other goroutine (only the raised one runs on
// the raised thread), on a nil Raised or while paused, both do nothing.
func (r *Raised) Pause() (resume func()) {
	if !r.letGo() {
		return func() {}
	}
	return func() {
		if raiseThread(r.p) == nil { // a failure leaves the goroutine unlocked, at normal priority
			r.tid.Store(int64(gettid()))
		}
	}
}

type raisedKey struct{}

// WithRaised returns ctx carrying r, for PauseRaised in the code the raised goroutine calls.
func WithRaised(ctx context.Context, r *Raised) context.Context {
	if r == nil {
		return ctx
	}
	return context.WithValue(ctx, raisedKey{}, r)
}

// PauseRaised is Pause on the Raised that ctx carries (WithRaised), if any.
func PauseRaised(ctx context.Context) (resume func()) {
	r, _ := ctx.Value(raisedKey{}).(*Raised)
	return r.Pause()
}

// numCPU is runtime.NumCPU, a variable so that tests can pretend to more cores.
var numCPU = runtime.NumCPU

// CheckPriority reports whether threads compute threads (<= 0: one per core) may run at priority p:
// above normal they must leave a core to the fetch path, and this process must be allowed to raise
// a thread (it raises one that ends at once).
func CheckPriority(p Priority, threads int) error {
	if p == PriorityNormal {
		return nil
	}
	if err := leavesACore(p, threads); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		r, err := Raise(p)
		r.Release()
		errc <- err
	}()
	return <-errc
}

// leavesACore refuses a raised priority for compute threads on every core: they would take the
// cores from the fetch path whenever they spin (a pool worker spins up to spinWindow after each
// op), so the experts the next block needs would arrive late. Measured with 2 threads on 2 cores:
// pregated decode 87–122 tok/s at high against 153–182 at normal (docs/BENCHMARKS.md).
func leavesACore(p Priority, threads int) error {
	if threads <= 0 {
		threads = numCPU()
	}
	if threads >= numCPU() {
		return fmt.Errorf("compute: %s priority for %d compute threads on %d cores: it needs a core left to the fetch path (fewer threads), or the raised threads starve it", p, threads, numCPU())
	}
	return nil
}
