package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// hfConfig is what this package reads from tokenizer_config.json and special_tokens_map.json.
type hfConfig struct {
	BOS                *hfToken                `json:"bos_token"` // null or absent: nil
	EOS                *hfToken                `json:"eos_token"`
	UNK                *hfToken                `json:"unk_token"`
	Pad                *hfToken                `json:"pad_token"`
	AddBOS             *bool                   `json:"add_bos_token"`
	AddEOS             *bool                   `json:"add_eos_token"`
	ExtraIDs           int                     `json:"extra_ids"`
	AdditionalSpecial  []hfToken               `json:"additional_special_tokens"`
	AddedTokensDecoder map[string]hfAddedToken `json:"added_tokens_decoder"` // id → token
	ChatTemplate       json.RawMessage         `json:"chat_template"`
}

// hfToken is a token named in a config: a string, or an object with "content" (AddedToken).
type hfToken struct {
	Content string
}

func (t *hfToken) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &t.Content); err == nil {
		return nil
	}
	var obj struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return fmt.Errorf("token is neither a string nor {\"content\": …}")
	}
	t.Content = obj.Content
	return nil
}

// readConfig reads one JSON config of dir; a missing file is an empty config.
func readConfig(dir, name string) (*hfConfig, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &hfConfig{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var c hfConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrTokenizer, path, err)
	}
	return &c, nil
}

// applyConfig applies tokenizer_config.json and special_tokens_map.json of dir: added tokens, the
// special tokens and whether Encode adds BOS and EOS, T5's <extra_id_N>, the chat template.
func (t *Tokenizer) applyConfig(dir string) error {
	for _, name := range []string{"special_tokens_map.json", "tokenizer_config.json"} {
		c, err := readConfig(dir, name)
		if err != nil {
			return err
		}
		if err := t.applyHFConfig(c); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrTokenizer, filepath.Join(dir, name), err)
		}
	}
	return nil
}

func (t *Tokenizer) applyHFConfig(c *hfConfig) error {
	ids := make([]string, 0, len(c.AddedTokensDecoder))
	for id := range c.AddedTokensDecoder {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return len(ids[i]) < len(ids[j]) || len(ids[i]) == len(ids[j]) && ids[i] < ids[j] })
	for _, s := range ids {
		id, err := strconv.Atoi(s)
		if err != nil || id < 0 {
			return fmt.Errorf("added_tokens_decoder: id %q", s)
		}
		a := c.AddedTokensDecoder[s]
		if err := t.addAdded(a.Content, id, a.Special); err != nil {
			return fmt.Errorf("added_tokens_decoder: %v", err)
		}
	}
	if c.ExtraIDs > 0 && c.ExtraIDs <= 1000 {
		// T5Tokenizer: <extra_id_i> is the i-th id from the top of vocabulary + extra_ids.
		base := len(t.vocab)
		if _, ok := t.ids["<extra_id_0>"]; !ok {
			for i := range c.ExtraIDs {
				if err := t.addAdded(fmt.Sprintf("<extra_id_%d>", i), base+c.ExtraIDs-1-i, true); err != nil {
					return fmt.Errorf("extra_ids: %v", err)
				}
			}
		}
	}
	for _, a := range c.AdditionalSpecial {
		if err := t.addAdded(a.Content, -1, true); err != nil {
			return fmt.Errorf("additional_special_tokens: %v", err)
		}
	}
	for _, f := range []struct {
		tok *hfToken
		dst *int
	}{{c.BOS, &t.bos}, {c.EOS, &t.eos}, {c.UNK, &t.unk}, {c.Pad, &t.pad}} {
		if f.tok == nil || f.tok.Content == "" {
			continue
		}
		// The unknown token stays decodable (a SentencePiece model writes it " ⁇ ").
		if err := t.addAdded(f.tok.Content, -1, f.dst != &t.unk); err != nil {
			return err
		}
		*f.dst = t.ids[f.tok.Content]
	}
	if c.AddBOS != nil {
		t.addBOS = *c.AddBOS
	}
	if c.AddEOS != nil {
		t.addEOS = *c.AddEOS
	}
	tmpl, err := parseChatTemplate(c.ChatTemplate)
	if err != nil {
		return err
	}
	if tmpl != "" {
		t.chatTemplate = tmpl
	}
	return nil
}

// parseChatTemplate reads chat_template: a string, or a list of {name, template} where "default"
// (else the first) is taken.
func parseChatTemplate(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("chat_template is neither a string nor a list of {name, template}")
	}
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
	}
	if len(list) > 0 {
		return list[0].Template, nil
	}
	return "", nil
}
