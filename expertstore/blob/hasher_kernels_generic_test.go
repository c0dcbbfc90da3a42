//go:build !amd64 || noasm

package blob

func accumKernels() map[string]func(acc *[8]uint64, p []byte) { return nil }
