// Package model owns everything about model files on disk: the safetensors format (a strict,
// memory-mapped reader and a streaming writer), element-type conversion, the HuggingFace config.json
// of the supported architectures (Switch Transformers and Mixtral), the architectures' tensor names
// and shapes, and Checkpoint, a model directory (single file or sharded) with tied-weight aliases.
//
// Nothing here computes: callers get validated metadata and read-only views of the weights.
package model

import "errors"

// Sentinel errors. Every error returned by this package wraps one of these (use errors.Is) and
// carries the file path, the tensor name where relevant, and what is wrong.
var (
	// ErrMalformed: a safetensors file or header violates the format.
	ErrMalformed = errors.New("model: malformed safetensors")
	// ErrUnknownDType: a dtype string is not one of the supported element types.
	ErrUnknownDType = errors.New("model: unknown dtype")
	// ErrDType: a tensor has an element type the operation cannot use.
	ErrDType = errors.New("model: wrong dtype")
	// ErrShapeMismatch: element counts or shapes disagree.
	ErrShapeMismatch = errors.New("model: shape mismatch")
	// ErrTensorNotFound: a tensor name is not in the file or checkpoint.
	ErrTensorNotFound = errors.New("model: tensor not found")
	// ErrConfig: config.json is missing, unreadable or invalid.
	ErrConfig = errors.New("model: invalid config")
	// ErrUnsupported: a valid feature that this project does not implement.
	ErrUnsupported = errors.New("model: unsupported")
	// ErrCheckpoint: a model directory is inconsistent (index, shards, missing or unexpected tensors).
	ErrCheckpoint = errors.New("model: invalid checkpoint")
	// ErrClosed: the file or checkpoint was already closed.
	ErrClosed = errors.New("model: use of closed file")
	// ErrWrite: a SafetensorsWriter was used incorrectly (too many or too few bytes).
	ErrWrite = errors.New("model: safetensors write")
)
