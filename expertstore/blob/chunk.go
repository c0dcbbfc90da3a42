package blob

import "hash/crc32"

// Transfer chunking. A blob crosses the wire in chunks of a fixed size (the last one may be short),
// each carrying the CRC32C (Castagnoli) of its bytes; hash/crc32 uses the CPU's CRC32 instructions
// (SSE 4.2, ARMv8), tens of GB/s.
const (
	// DefaultChunkSize is the chunk size when a request leaves it to the store.
	DefaultChunkSize = 1 << 20
	// MinChunkSize and MaxChunkSize bound the chunk size a request may ask for; enforcing the
	// range is the caller's (ChunkCRCs accepts any positive size).
	MinChunkSize = 64 << 10
	MaxChunkSize = 4 << 20
)

// castagnoli is the CRC32C table; read-only once built.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC32C (Castagnoli) checksum of b.
func CRC32C(b []byte) uint32 {
	return crc32.Checksum(b, castagnoli)
}

// UpdateCRC32C returns the CRC32C of the bytes summed into crc followed by p, so a chunk can be
// checked piece by piece as it arrives.
func UpdateCRC32C(crc uint32, p []byte) uint32 {
	return crc32.Update(crc, castagnoli, p)
}

// ChunkCRCs returns the CRC32C of every chunkSize-byte chunk of b in order, the last chunk short
// when len(b) is not a multiple; an empty b has no chunks (an empty slice). A chunkSize of zero or
// less means DefaultChunkSize.
func ChunkCRCs(b []byte, chunkSize int) []uint32 {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	n := len(b) / chunkSize
	if len(b)%chunkSize != 0 {
		n++
	}
	crcs := make([]uint32, 0, n)
	for len(b) > 0 {
		c := min(chunkSize, len(b))
		crcs = append(crcs, CRC32C(b[:c]))
		b = b[c:]
	}
	return crcs
}
