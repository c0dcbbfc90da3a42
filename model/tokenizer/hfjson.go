package tokenizer

import "fmt"

func loadHFJSON(path string) (*Tokenizer, error) {
	return nil, fmt.Errorf("%w: %s: tokenizer.json is not supported yet", ErrTokenizer, path)
}
