//go:build !linux

package compute

import "errors"

func gettid() int { return 0 }

func setThreadNice(int) error {
	return errors.ErrUnsupported
}

// ThreadsAt lists this process's threads whose priority is p (Linux only).
func ThreadsAt(Priority) ([]int, error) { return nil, errors.ErrUnsupported }
