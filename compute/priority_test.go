package compute

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
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
	if err := CheckPriority(PriorityHigh); err != nil {
		t.Skipf("raising a thread is not allowed here: %v", err)
	}
}

// TestRaiseThreadEndsWithItsGoroutine raises a goroutine's thread, finds it at that priority, and
// checks that the thread ends with the goroutine, so the priority never reaches other goroutines.
func TestRaiseThreadEndsWithItsGoroutine(t *testing.T) {
	skipUnlessRaisable(t)
	// raised runs a raised goroutine until release is closed and returns its thread's id.
	raised := func(release chan struct{}) int {
		tid := make(chan int)
		go func() {
			if err := RaiseThread(PriorityHigh); err != nil {
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
	at, err := ThreadsAt(PriorityHigh)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(at, id) {
		t.Fatalf("thread %d is not at high priority (threads at it: %v)", id, at)
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

// TestRaiseThreadRefused drops CAP_SYS_NICE from one thread, where raising must fail with an error
// that says what it needs and leave the goroutine unlocked and the thread as it was.
func TestRaiseThreadRefused(t *testing.T) {
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
		err := RaiseThread(PriorityHigh)
		if prio, gerr := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()); gerr == nil && 20-prio != 0 {
			t.Errorf("the refused thread's nice is %d, want 0", 20-prio)
		}
		errc <- err
	}()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_NICE") || !strings.Contains(err.Error(), "high") {
		t.Fatalf("RaiseThread without CAP_SYS_NICE: %v, want an error naming the priority and what it needs", err)
	}
}

// TestCPUPoolRaisesItsThreads checks that a CPU's worker threads run at its priority and end
// with it.
func TestCPUPoolRaisesItsThreads(t *testing.T) {
	skipUnlessRaisable(t)
	before, _ := ThreadsAt(PriorityMedium)
	c, err := NewCPUConfig(CPUConfig{Threads: 3, Priority: PriorityMedium})
	if err != nil {
		t.Fatal(err)
	}
	during, _ := ThreadsAt(PriorityMedium)
	if len(during)-len(before) != 2 {
		t.Errorf("%d threads at medium priority with the pool, %d before: want the pool's 2 workers more", len(during), len(before))
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
