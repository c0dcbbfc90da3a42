package compute

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

func gettid() int { return unix.Gettid() }

// setThreadNice sets the calling thread's nice value: on Linux, PRIO_PROCESS with a thread id
// addresses that one thread (setpriority(2), "BUGS"), which is what lets the compute threads
// alone go first.
func setThreadNice(nice int) error {
	err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice)
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (raising a thread needs CAP_SYS_NICE, or an RLIMIT_NICE of at least %d)", err, 20-nice)
	}
	return err
}

// ThreadsAt lists this process's threads whose priority is p: how a test, or an operator's
// tool, sees which threads compute at it.
func ThreadsAt(p Priority) ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var tids []int
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// The raw syscall answers 20 - nice (1 to 40), so that no priority reads as an error.
		if prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && 20-prio == p.Nice() {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
