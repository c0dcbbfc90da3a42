// Package modelblobs turns a checkpoint into the blobs the stores hold: one blob per (MoE block,
// expert) with that expert's tensors in the checkpoint's dtype, and the dense tensors (embeddings,
// attention, norms, routers, pre-gates) packed in name order into dense blobs that workers download
// whole. The tokenizer files of the checkpoint directory, when it has them, travel in one more
// dense blob, each file a U8 tensor named tokenizer.BlobPrefix + its name. Blobs are content-addressed, so splitting the same checkpoint twice gives the same digests
// and re-importing it moves nothing.
package modelblobs

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/routing"
)

// DefaultMaxDense is the largest dense blob Split makes (a single larger tensor gets a blob alone).
const DefaultMaxDense = 256 << 20

// Blob is one blob of a model: an expert's (Dense empty; Expert says which, blocks numbered as
// model.MoELayout does) or a dense one (Dense names it: "00000", "00001", … in the order Split
// makes them).
type Blob struct {
	Expert routing.ExpertKey
	Dense  string
	Header blob.Header
	Data   []byte
	Digest blob.Digest
}

// String names the blob for messages: "expert 3/7" or "dense 00001".
func (b Blob) String() string {
	if b.Dense != "" {
		return "dense " + b.Dense
	}
	return "expert " + b.Expert.String()
}

// Split calls emit for every blob of the checkpoint: the experts in (block, expert) order, then the
// dense blobs, the tokenizer's last (when the directory has one). Blobs are built one at a time,
// so memory stays at one blob.
func Split(ckpt *model.Checkpoint, modelName string, maxDense int64, emit func(Blob) error) error {
	cfg := ckpt.Config()
	if cfg == nil {
		return fmt.Errorf("modelblobs: %s has no config", ckpt.Dir())
	}
	if maxDense <= 0 {
		maxDense = DefaultMaxDense
	}
	isExpert := map[string]bool{}
	for b, layout := range model.MoELayout(cfg) {
		for e, names := range layout.Experts {
			h := blob.Header{Kind: blob.KindExpert, Model: modelName, Block: b, Expert: e}
			if err := build(ckpt, Blob{Expert: routing.ExpertKey{Block: b, Expert: e}}, h, names, emit); err != nil {
				return err
			}
			for _, n := range names {
				isExpert[n] = true
			}
		}
	}
	var group []string
	var size int64
	n := 0
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		h := blob.Header{Kind: blob.KindDense, Model: modelName, Block: -1, Expert: -1}
		err := build(ckpt, Blob{Dense: fmt.Sprintf("%05d", n)}, h, group, emit)
		group, size, n = nil, 0, n+1
		return err
	}
	for _, name := range ckpt.Names() {
		if isExpert[name] {
			continue
		}
		info, err := ckpt.Info(name)
		if err != nil {
			return err
		}
		bytes := int64(info.NumElements() * info.DType.Size())
		if size > 0 && size+bytes > maxDense {
			if err := flush(); err != nil {
				return err
			}
		}
		group = append(group, name)
		size += bytes
	}
	if err := flush(); err != nil {
		return err
	}
	return splitTokenizer(ckpt.Dir(), modelName, fmt.Sprintf("%05d", n), emit)
}

// splitTokenizer emits the blob of the tokenizer files of dir, if it has a tokenizer.
func splitTokenizer(dir, modelName, denseName string, emit func(Blob) error) error {
	files, err := tokenizer.Files(dir)
	if errors.Is(err, tokenizer.ErrNoTokenizer) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("modelblobs: %w", err)
	}
	var tensors []blob.Tensor
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if len(files[name]) > 0 {
			tensors = append(tensors, blob.Tensor{Name: tokenizer.BlobPrefix + name, DType: string(model.U8),
				Shape: []int{len(files[name])}, Data: files[name]})
		}
	}
	h := blob.Header{Kind: blob.KindDense, Model: modelName, Block: -1, Expert: -1}
	return emitBlob(Blob{Dense: denseName}, h, tensors, emit)
}

func build(ckpt *model.Checkpoint, key Blob, h blob.Header, names []string, emit func(Blob) error) error {
	tensors := make([]blob.Tensor, len(names))
	for i, name := range names {
		data, info, err := ckpt.Bytes(name)
		if err != nil {
			return fmt.Errorf("modelblobs: %s: %w", key, err)
		}
		tensors[i] = blob.Tensor{Name: name, DType: string(info.DType), Shape: info.Shape, Data: data}
	}
	return emitBlob(key, h, tensors, emit)
}

// emitBlob builds the blob of tensors and emits it under key.
func emitBlob(key Blob, h blob.Header, tensors []blob.Tensor, emit func(Blob) error) error {
	data, err := blob.Build(h, tensors)
	if err != nil {
		return fmt.Errorf("modelblobs: %s: %w", key, err)
	}
	h, _, err = blob.Parse(data)
	if err != nil {
		return fmt.Errorf("modelblobs: %s: %w", key, err)
	}
	key.Header, key.Data, key.Digest = h, data, blob.Sum(data)
	return emit(key)
}
