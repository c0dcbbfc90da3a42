package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileNames are the files of a checkpoint directory that make up its tokenizer, in the order Load
// looks for the model (tokenizer.json, then the SentencePiece models) and then its configuration.
var FileNames = []string{"tokenizer.json", "tokenizer.model", "spiece.model", "special_tokens_map.json", "tokenizer_config.json"}

// BlobPrefix names the tensors that carry tokenizer files in a model's dense blobs (pregate
// import; workers write them back as files): "tokenizer/tokenizer.json" holds that file's bytes as
// a U8 vector.
const BlobPrefix = "tokenizer/"

// IsFileName reports whether name is one of FileNames.
func IsFileName(name string) bool {
	for _, n := range FileNames {
		if n == name {
			return true
		}
	}
	return false
}

// maxFileBytes bounds one tokenizer file (large vocabularies' tokenizer.json are ~20 MB).
const maxFileBytes = 64 << 20

// Files returns the tokenizer files of dir by name, for carrying a tokenizer with a model: what
// Load needs is there, so Load of a directory holding them gives the same tokenizer. It fails
// with ErrNoTokenizer when dir has no tokenizer model.
func Files(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, name := range FileNames {
		path := filepath.Join(dir, name)
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
		if st.Size() > maxFileBytes {
			return nil, fmt.Errorf("%w: %s: %d bytes, more than %d", ErrTokenizer, path, st.Size(), maxFileBytes)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
		files[name] = b
	}
	if files["tokenizer.json"] == nil && files["tokenizer.model"] == nil && files["spiece.model"] == nil {
		return nil, fmt.Errorf("%w in %s (want tokenizer.json, tokenizer.model or spiece.model)", ErrNoTokenizer, dir)
	}
	return files, nil
}
