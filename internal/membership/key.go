package membership

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
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

// LoadKeys reads a gossip keyring from path: one key per line, base64 (a file of one line, or of a
// raw key, is read as LoadKey reads it). The first key encrypts what this node sends; every key
// decrypts what it receives. Rotating a key is three edits of every node's file, each waiting
// for the last to reach every node: add the new key on a second line, move it first, remove the
// old one (docs/SECURITY.md).
func LoadKeys(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	var lines [][]byte
	for l := range bytes.Lines(data) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			lines = append(lines, l)
		}
	}
	if len(lines) <= 1 {
		k, err := LoadKey(path)
		if err != nil {
			return nil, err
		}
		return [][]byte{k}, nil
	}
	keys := make([][]byte, len(lines))
	for i, l := range lines {
		k := make([]byte, base64.StdEncoding.DecodedLen(len(l)))
		n, err := base64.StdEncoding.Decode(k, l)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: %s: line %d: %w (a file of several keys holds one base64 key per line)", ErrBadKey, path, i+1, err)
		case !validKeyLen(n):
			return nil, fmt.Errorf("%w: %s: line %d decodes to %d bytes, want 16, 24 or 32", ErrBadKey, path, i+1, n)
		}
		keys[i] = k[:n]
	}
	return keys, nil
}

// reloadKeys reads path every interval while its modification time or size changes, and makes
// kr hold exactly its keys, the first as the primary. A file that cannot be read or parsed keeps
// the keyring as it is (and is logged): a half-written file must not cut the node off.
func (m *Member) reloadKeys(path string, interval time.Duration, kr *memberlist.Keyring) {
	var last os.FileInfo
	if st, err := os.Stat(path); err == nil {
		last = st
	}
	m.every(interval, func() {
		st, err := os.Stat(path)
		if err != nil || last != nil && st.ModTime().Equal(last.ModTime()) && st.Size() == last.Size() {
			return
		}
		last = st
		keys, err := LoadKeys(path)
		if err == nil {
			err = applyKeys(kr, keys)
		}
		if err != nil {
			m.logger.Warn("gossip keys not reloaded; keeping the current keyring", "file", path, "err", err)
			return
		}
		m.logger.Info("gossip keyring reloaded", "file", path, "keys", len(keys))
	})
}

// applyKeys makes kr hold keys, keys[0] the primary.
func applyKeys(kr *memberlist.Keyring, keys [][]byte) error {
	for _, k := range keys {
		if err := kr.AddKey(k); err != nil {
			return err
		}
	}
	if err := kr.UseKey(keys[0]); err != nil {
		return err
	}
	for _, old := range kr.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, old) }) {
			if err := kr.RemoveKey(old); err != nil {
				return err
			}
		}
	}
	return nil
}
