//go:build amd64 && !noasm

package blob

import "golang.org/x/sys/cpu"

// accumKernels are the vector kernels this CPU can run, by name.
func accumKernels() map[string]func(acc *[8]uint64, p []byte) {
	k := map[string]func(acc *[8]uint64, p []byte){}
	if cpu.X86.HasAVX2 {
		k["avx2"] = func(acc *[8]uint64, p []byte) { accumBlocksAVX2(acc, &p[0], len(p)/blockLen, &xxh3Secret[0]) }
	}
	if cpu.X86.HasAVX512F {
		k["avx512"] = func(acc *[8]uint64, p []byte) { accumBlocksAVX512(acc, &p[0], len(p)/blockLen, &xxh3Secret[0]) }
	}
	return k
}
