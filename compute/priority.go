package compute

import (
	"fmt"
	"runtime"
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

// RaiseThread gives the calling goroutine's OS thread priority p and locks the goroutine to it
// for the rest of its life: the runtime ends a thread whose goroutine exits locked, so the
// priority never passes to other goroutines (the process's main thread is not ended but wedged:
// it never runs again). At PriorityNormal it does nothing. On failure the goroutine is left
// unlocked and the thread as it was.
func RaiseThread(p Priority) error {
	if p == PriorityNormal {
		return nil
	}
	runtime.LockOSThread()
	if err := setThreadNice(p.Nice()); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("compute: %s priority (nice %d) for the compute threads: %w", p, p.Nice(), err)
	}
	return nil
}

// CheckPriority reports whether this process may give its compute threads priority p, by raising
// a thread that ends at once.
func CheckPriority(p Priority) error {
	errc := make(chan error, 1)
	go func() { errc <- RaiseThread(p) }() // locked on success: the thread ends with the goroutine
	return <-errc
}
