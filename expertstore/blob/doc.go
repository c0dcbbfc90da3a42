// Package blob owns the bytes that move between expert stores and workers: the raw blob format
// (one expert's or one dense layer's tensors), the content digest that names a blob, the CRC32C of
// every transfer chunk, and the optional lossless compression of a blob on the wire.
//
// Data flow. The importer Builds a blob from a checkpoint's tensors and names it by Sum (the
// digest of its raw bytes). A store keeps raw blobs, serves them in chunks, each with its CRC32C
// (ChunkCRCs), and may send a blob Compressed (byte planes, entropy coded) when that saves enough.
// A worker checks every chunk's CRC32C as it arrives, Decompresses the frame if there is one
// (sizing its buffer with DecompressedSize), verifies the raw bytes against the digest it asked
// for, and Parses the blob to view the tensors in place (Header.Tensor): every tensor starts at a
// 64-byte-aligned offset, so a device copy or a typed view needs no further copy.
//
// Nothing here does I/O; every function works on byte slices, never panics on bad input, and
// returns errors that wrap one of this package's sentinels.
package blob

import "errors"

// Sentinel errors. Every error returned by this package wraps one of these (use errors.Is) and
// says what is wrong: the field, the tensor, the segment, the sizes.
var (
	// ErrCorrupt: bytes that claim to be a blob or a compressed frame are not one (bad magic,
	// out-of-range lengths, checksum mismatch, undecodable data).
	ErrCorrupt = errors.New("blob: corrupt")
	// ErrInvalid: the caller asked for something impossible (Build with an unknown dtype or
	// wrong-sized data, Decompress into a buffer of the wrong length).
	ErrInvalid = errors.New("blob: invalid argument")
	// ErrDigest: a digest string is not 32 lowercase hex characters.
	ErrDigest = errors.New("blob: malformed digest")
	// ErrNotFound: a blob has no tensor of the requested name.
	ErrNotFound = errors.New("blob: tensor not found")
)
