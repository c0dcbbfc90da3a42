// Package golden reads the golden fixtures in testdata/ (computed by HuggingFace transformers, see
// testdata/*/README.md): the prompts and the ids HF generated for them. The tests of several
// packages compare against them.
package golden

import (
	"fmt"
	"path/filepath"

	"github.com/pregate/pregate/model"
)

// GeneratedLen is the number of ids HF generated per prompt in every fixture.
const GeneratedLen = 10

// Prompts returns the fixture in dir's prompts (unpadded, per its attention mask) and the ids HF
// generated greedily for each.
func Prompts(dir string) (prompts, want [][]int, err error) {
	g, err := model.OpenTensorFile(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		return nil, nil, err
	}
	defer g.Close()
	info, err := g.Info("input_ids")
	if err != nil {
		return nil, nil, err
	}
	if len(info.Shape) != 2 {
		return nil, nil, fmt.Errorf("golden: %s: input_ids has shape %v", dir, info.Shape)
	}
	rows, cols := info.Shape[0], info.Shape[1]
	ids, err := g.Int64("input_ids", rows, cols)
	if err != nil {
		return nil, nil, err
	}
	mask, err := g.Int64("attention_mask", rows, cols)
	if err != nil {
		return nil, nil, err
	}
	gen, err := g.Int64("generated_ids", rows, GeneratedLen)
	if err != nil {
		return nil, nil, err
	}
	for r := range rows {
		var p, w []int
		for j := range cols {
			if mask[r*cols+j] != 0 {
				p = append(p, int(ids[r*cols+j]))
			}
		}
		for _, v := range gen[r*GeneratedLen : (r+1)*GeneratedLen] {
			w = append(w, int(v))
		}
		prompts, want = append(prompts, p), append(want, w)
	}
	return prompts, want, nil
}
