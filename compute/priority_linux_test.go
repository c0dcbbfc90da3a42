package compute

import (
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParsePriority(t *testing.T) {
	for _, p := range []Priority{PriorityNormal, PriorityMedium, PriorityHigh} {
		got, err := ParsePriority(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePriority(%q) = %v, %v", p, got, err)
		}
	}
	if _, err := ParsePriority("realtime"); err == nil || !strings.Contains(err.Error(), `"realtime"`) {
		t.Errorf("ParsePriority(realtime): %v, want an error naming it", err)
	}
	if n := PriorityHigh.Nice(); n != -10 {
		t.Errorf("high is nice %d, want -10", n)
	}
}

// skipUnlessRaisable skips where this process may not raise a thread (not root, no CAP_SYS_NICE).
func skipUnlessRaisable(t *testing.T) {
	t.Helper()
	if err := CheckPriority(PriorityHigh, 1); err != nil {
		t.Skipf("raising a thread is not allowed here: %v", err)
	}
}

// TestRaiseAndRelease raises a goroutine's thread, finds it (and only it) at that priority, and
// checks that Release gives it back at normal priority and unlocked.
func TestRaiseAndRelease(t *testing.T) {
	skipUnlessRaisable(t)
	type state struct{ tid, nice int }
	nice := func() state {
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		if err != nil {
			t.Error(err)
		}
		return state{unix.Gettid(), 20 - prio}
	}
	before, _ := ThreadsAt(PriorityHigh)
	raised, released, done := make(chan state), make(chan state), make(chan struct{})
	go func() {
		r, err := Raise(PriorityHigh)
		if err != nil {
			t.Error(err)
			close(raised)
			return
		}
		raised <- nice()
		<-done
		r.Release()
		r.Release() // twice: nothing
		released <- nice()
	}()
	s, ok := <-raised
	if !ok {
		return
	}
	at, err := ThreadsAt(PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	if s.nice != -10 || !slices.Contains(at, s.tid) || len(at) != len(before)+1 {
		t.Fatalf("raised: thread %d at nice %d; threads at high %v, %v before: want that one more", s.tid, s.nice, at, before)
	}
	close(done)
	if s2 := <-released; s2.nice != 0 {
		t.Errorf("released: thread %d at nice %d, want 0", s2.tid, s2.nice)
	}
	if at, _ := ThreadsAt(PriorityHigh); len(at) != len(before) {
		t.Errorf("threads at high after Release: %v, before %v", at, before)
	}
}

// TestRaisedThreadEndsWithItsGoroutine: a raised goroutine that ends without Release takes its
// thread with it, so the priority never reaches other goroutines.
func TestRaisedThreadEndsWithItsGoroutine(t *testing.T) {
	skipUnlessRaisable(t)
	// raised runs a raised goroutine until release is closed and returns its thread's id.
	raised := func(release chan struct{}) int {
		tid := make(chan int)
		go func() {
			if _, err := Raise(PriorityHigh); err != nil {
				t.Error(err)
				close(tid)
				return
			}
			tid <- unix.Gettid()
			<-release
		}()
		return <-tid
	}
	// The main thread is wedged, not ended, when its locked goroutine exits: try another.
	release := make(chan struct{})
	id := raised(release)
	for id == os.Getpid() {
		close(release)
		release = make(chan struct{})
		id = raised(release)
	}
	if id == 0 {
		return
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/self/task/" + strconv.Itoa(id)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the raised thread %d outlived its goroutine", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRaiseRefused drops CAP_SYS_NICE from one thread, where raising must fail with an error
// that says what it needs and leave the goroutine unlocked and the thread as it was.
func TestRaiseRefused(t *testing.T) {
	skipUnlessRaisable(t)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err != nil || rl.Cur > 20 {
		t.Skipf("RLIMIT_NICE %d lets any thread be raised: %v", rl.Cur, err)
	}
	errc := make(chan error, 1)
	go func() {
		// The capabilities are the thread's: this one, locked and never unlocked, ends with the
		// goroutine, so the rest of the process keeps them.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[unix.CAP_SYS_NICE/32].Effective &^= 1 << (unix.CAP_SYS_NICE % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		_, err := Raise(PriorityHigh)
		if prio, gerr := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()); gerr == nil && 20-prio != 0 {
			t.Errorf("the refused thread's nice is %d, want 0", 20-prio)
		}
		errc <- err
	}()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_NICE") || !strings.Contains(err.Error(), "high") {
		t.Fatalf("Raise without CAP_SYS_NICE: %v, want an error naming the priority and what it needs", err)
	}
}

// TestCPUPoolRaisesItsThreads checks that a CPU's worker threads run at its priority, compute
// right (their spinning does not yield), and end with it.
func TestCPUPoolRaisesItsThreads(t *testing.T) {
	skipUnlessRaisable(t)
	defer func(f func() int) { numCPU = f }(numCPU)
	numCPU = func() int { return 8 } // 3 threads leave cores to the rest
	before, _ := ThreadsAt(PriorityMedium)
	c, err := NewCPUConfig(CPUConfig{Threads: 3, Priority: PriorityMedium})
	if err != nil {
		t.Fatal(err)
	}
	during, _ := ThreadsAt(PriorityMedium)
	if len(during)-len(before) != 2 {
		t.Errorf("%d threads at medium priority with the pool, %d before: want the pool's 2 workers more", len(during), len(before))
	}
	if c.p.yield {
		t.Error("the raised pool's spinning yields")
	}
	for range 100 {
		var sum atomic.Int64
		c.ParallelFor(3000, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				sum.Add(int64(i))
			}
		})
		if got := sum.Load(); got != 3000*2999/2 {
			t.Fatalf("ParallelFor on the raised pool summed %d, want %d", got, 3000*2999/2)
		}
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, _ := ThreadsAt(PriorityMedium)
		if len(after) == len(before) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d threads still at medium priority after Close, %d before", len(after), len(before))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPriorityNeedsACore: compute threads on every core are not raised, whatever the rights, and
// the error says why.
func TestPriorityNeedsACore(t *testing.T) {
	if err := CheckPriority(PriorityHigh, 0); err == nil || !strings.Contains(err.Error(), "core") {
		t.Errorf("CheckPriority(high, every core): %v, want an error about the cores", err)
	}
	before, _ := ThreadsAt(PriorityHigh)
	c, err := NewCPUConfig(CPUConfig{Threads: numCPU(), Priority: PriorityHigh})
	if err == nil || !strings.Contains(err.Error(), "core") {
		t.Errorf("NewCPUConfig(high, every core): %v, want an error about the cores", err)
	}
	defer c.Close()
	if after, _ := ThreadsAt(PriorityHigh); len(after) != len(before) {
		t.Errorf("%d threads at high priority, %d before: the pool raised its threads", len(after), len(before))
	}
	if !c.p.yield {
		t.Error("a pool at normal priority does not yield")
	}
}

// TestRaisedPause: a raised goroutine that pauses runs at normal priority and unlocked until it
// resumes, then on a raised thread again; a pause from another goroutine does nothing.
func TestRaisedPause(t *testing.T) {
	skipUnlessRaisable(t)
	nice := func() int {
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		if err != nil {
			t.Error(err)
		}
		return 20 - prio
	}
	type state struct {
		tid, nice int
		raisedTid int64
	}
	got := make(chan []state, 1)
	var r *Raised
	ready, other := make(chan struct{}), make(chan struct{})
	go func() {
		var err error
		if r, err = Raise(PriorityHigh); err != nil {
			t.Error(err)
			close(ready)
			got <- nil
			return
		}
		close(ready)
		<-other // another goroutine's Pause has run
		var s []state
		s = append(s, state{unix.Gettid(), nice(), r.tid.Load()})
		resume := r.Pause()
		s = append(s, state{unix.Gettid(), nice(), r.tid.Load()})
		for range 100 {
			runtime.Gosched() // unlocked: free to move to another thread
		}
		resume()
		s = append(s, state{unix.Gettid(), nice(), r.tid.Load()})
		got <- s
	}()
	<-ready
	if r != nil {
		r.Pause()() // not the raised goroutine: nothing happens
		PauseRaised(WithRaised(context.Background(), r))()
	}
	close(other)
	s := <-got
	if s == nil {
		return
	}
	if s[0].nice != -10 || s[0].raisedTid != int64(s[0].tid) {
		t.Errorf("before the pause: %+v, want nice -10 on the raised thread (another goroutine's Pause must not touch it)", s[0])
	}
	if s[1].nice != 0 || s[1].raisedTid != 0 {
		t.Errorf("paused: %+v, want nice 0 and no raised thread", s[1])
	}
	if s[2].nice != -10 || s[2].raisedTid != int64(s[2].tid) {
		t.Errorf("resumed: %+v, want nice -10 on the thread it runs on", s[2])
	}
}

// BenchmarkRaisedWake is a compute goroutine waiting for another that works 20 µs (a fetch that
// lands), at normal priority, raised (locked to its thread), and raised but paused while it waits
// (Raised.Pause): what a stall costs beyond the wait itself. Here: 25, 64 and 34 µs per wait.
func BenchmarkRaisedWake(b *testing.B) {
	for _, c := range []struct {
		name          string
		raise, paused bool
	}{{"normal", false, false}, {"raised", true, false}, {"paused", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			if c.raise {
				if err := CheckPriority(PriorityHigh, 1); err != nil {
					b.Skipf("raising a thread is not allowed here: %v", err)
				}
			}
			req, resp := make(chan struct{}), make(chan struct{})
			go func() {
				for range req {
					for t := time.Now(); time.Since(t) < 20*time.Microsecond; {
					}
					resp <- struct{}{}
				}
			}()
			defer close(req)
			done := make(chan struct{})
			go func() {
				defer close(done)
				var r *Raised
				if c.raise {
					r, _ = Raise(PriorityHigh)
				}
				for range b.N {
					req <- struct{}{}
					resume := func() {}
					if c.paused {
						resume = r.Pause()
					}
					<-resp
					resume()
				}
			}()
			<-done
		})
	}
}
