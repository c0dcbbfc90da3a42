// Package chattemplate renders a model's chat template — tokenizer_config.json's chat_template,
// a Jinja template — into the prompt text the model was trained on, as HF's apply_chat_template
// does: the same Jinja settings (trim_blocks, lstrip_blocks), the same variables (messages,
// add_generation_prompt, bos_token, eos_token, …) and raise_exception. The Jinja engine is
// github.com/nikolalohinski/gonja/v2, with a loader that reads no file (a template cannot include
// one).
package chattemplate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// ErrTemplate wraps a template that does not parse or fails to render (raise_exception included:
// its message is the template's own, such as "Conversation roles must alternate …").
var ErrTemplate = errors.New("chattemplate: chat template")

// Message is one message of a conversation, as templates read it: message['role'],
// message['content'].
type Message struct {
	Role    string
	Content string
}

// Tokens are the special tokens a template may name (bos_token, eos_token, unk_token, pad_token);
// "" for those the tokenizer has none of.
type Tokens struct {
	BOS, EOS, UNK, Pad string
}

// Template is a parsed chat template. It is safe for concurrent use.
type Template struct {
	tpl    *exec.Template
	tokens Tokens
}

// rootName names the template for the loader, which holds nothing else.
const rootName = "/chat_template"

// Parse parses a chat template.
func Parse(source string, tokens Tokens) (*Template, error) {
	cfg := config.New()
	cfg.TrimBlocks = true // HF: jinja2 Environment(trim_blocks=True, lstrip_blocks=True)
	cfg.LeftStripBlocks = true
	cfg.KeepTrailingNewline = false
	loader, err := loaders.NewMemoryLoader(map[string]string{rootName: source})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	env := &exec.Environment{
		Context:           exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables),
		Filters:           builtins.Filters,
		Tests:             builtins.Tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           builtins.Methods,
	}
	tpl, err := exec.NewTemplate(rootName, cfg, loader, env)
	if err != nil {
		if cause := errors.Unwrap(err); cause != nil {
			err = cause // gonja's own wrapping quotes the whole template
		}
		return nil, fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	return &Template{tpl: tpl, tokens: tokens}, nil
}

// raised is the error raise_exception returns, so Render can report the template's own message.
type raised struct{ msg string }

func (r *raised) Error() string { return r.msg }

// Render renders messages. With addGenerationPrompt the template is asked to end with the start
// of the assistant's turn (templates that have none, such as Mixtral's, ignore it).
func (t *Template) Render(messages []Message, addGenerationPrompt bool) (string, error) {
	msgs := make([]map[string]any, len(messages))
	for i, m := range messages {
		msgs[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	var failure *raised
	data := exec.NewContext(map[string]any{
		"messages":              msgs,
		"add_generation_prompt": addGenerationPrompt,
		"bos_token":             t.tokens.BOS,
		"eos_token":             t.tokens.EOS,
		"unk_token":             t.tokens.UNK,
		"pad_token":             t.tokens.Pad,
		"tools":                 nil,
		"documents":             nil,
		"raise_exception": func(msg string) (string, error) {
			failure = &raised{msg: msg}
			return "", failure
		},
	})
	out, err := t.tpl.ExecuteToString(data)
	if failure != nil {
		return "", fmt.Errorf("%w: %s", ErrTemplate, failure.msg)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrTemplate, strings.TrimSpace(err.Error()))
	}
	return out, nil
}
