package worker

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// LoadAPIKeys reads the API keys of path: one per line; blank lines and lines starting with #
// are skipped. A file with no key is an error (it would lock every client out).
func LoadAPIKeys(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k := strings.TrimSpace(sc.Text()); k != "" && !strings.HasPrefix(k, "#") {
			keys = append(keys, k)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("api keys %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("api keys %s: no key in the file", path)
	}
	return keys, nil
}

// apiKeys checks Authorization: Bearer <key> against the configured keys. Keys are compared as
// SHA-256 digests with subtle.ConstantTimeCompare, every key every time: the time taken says
// nothing about how much of a key was right, nor its length.
type apiKeys struct{ digests [][sha256.Size]byte }

func newAPIKeys(keys []string) *apiKeys {
	if len(keys) == 0 {
		return nil
	}
	a := &apiKeys{}
	for _, k := range keys {
		a.digests = append(a.digests, sha256.Sum256([]byte(k)))
	}
	return a
}

func (a *apiKeys) allowed(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	d := sha256.Sum256([]byte(strings.TrimSpace(token)))
	match := 0
	for _, k := range a.digests {
		match |= subtle.ConstantTimeCompare(d[:], k[:])
	}
	return match == 1
}

// require wraps h: without a valid key, 401 as OpenAI answers it.
func (a *apiKeys) require(h http.HandlerFunc) http.HandlerFunc {
	if a == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.allowed(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pregate"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":{"message":"missing or invalid API key: send Authorization: Bearer <key>","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`)) //nolint:errcheck
			return
		}
		h(w, r)
	}
}
