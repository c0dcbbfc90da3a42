//go:build !amd64 || noasm

package blob

func accumBlocks(acc *[8]uint64, p []byte) { accumBlocksGeneric(acc, p) }
