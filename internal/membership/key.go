package membership

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
)

// LoadKey reads a gossip encryption key from path: either base64 text (as `memberlist`/`serf
// keygen`, or `head -c 32 /dev/urandom | base64`, write it; surrounding whitespace ignored) or the
// raw 16, 24 or 32 bytes. Base64 is tried first: a file whose text decodes to a valid key length
// is taken as base64. Errors wrap ErrBadKey and name the file and the problem.
func LoadKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err) // *PathError names the file
	}
	text := bytes.TrimSpace(data)
	if len(text) == 0 {
		return nil, fmt.Errorf("%w: %s: file is empty", ErrBadKey, path)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, b64err := base64.StdEncoding.Decode(key, text)
	if b64err == nil && validKeyLen(n) {
		return key[:n], nil
	}
	if validKeyLen(len(data)) {
		return data, nil
	}
	if b64err == nil {
		return nil, fmt.Errorf("%w: %s: base64 decodes to %d bytes, want 16, 24 or 32", ErrBadKey, path, n)
	}
	return nil, fmt.Errorf("%w: %s: %d bytes, neither base64 (%v) nor a raw key of 16, 24 or 32 bytes",
		ErrBadKey, path, len(data), b64err)
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }
