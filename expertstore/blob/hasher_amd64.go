//go:build amd64 && !noasm

package blob

import "golang.org/x/sys/cpu"

// accumBlocksAVX2 and accumBlocksAVX512 are accumBlocksGeneric for n whole blocks at p, with the
// default secret at sec (hasher_amd64.s).
//
//go:noescape
func accumBlocksAVX2(acc *[8]uint64, p *byte, n int, sec *byte)

//go:noescape
func accumBlocksAVX512(acc *[8]uint64, p *byte, n int, sec *byte)

func accumBlocks(acc *[8]uint64, p []byte) {
	n := len(p) / blockLen
	switch {
	case n == 0:
	case cpu.X86.HasAVX512F:
		accumBlocksAVX512(acc, &p[0], n, &xxh3Secret[0])
	case cpu.X86.HasAVX2:
		accumBlocksAVX2(acc, &p[0], n, &xxh3Secret[0])
	default:
		accumBlocksGeneric(acc, p)
	}
}
