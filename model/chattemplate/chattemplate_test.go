package chattemplate

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Mixtral-8x7B-Instruct-v0.1's chat templates (tokenizer_config.json on the hub): the one it was
// released with, and the one that replaced it (an optional system message, " [INST]" with a space).
const (
	mixtralV1 = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"

	mixtralV3 = "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"

	// ChatML (Qwen, OpenHermes): add_generation_prompt and newlines.
	chatML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

var mistralTokens = Tokens{BOS: "<s>", EOS: "</s>", UNK: "<unk>"}

// TestRender: HF's apply_chat_template(messages, tokenize=False) for these conversations, written
// out by hand from the templates' definitions (transformers cannot be installed here).
func TestRender(t *testing.T) {
	three := []Message{{"user", "Hello"}, {"assistant", "Hi there"}, {"user", "How are you?"}}
	withSystem := append([]Message{{"system", "You are helpful."}}, three...)
	tests := []struct {
		name      string
		template  string
		give      []Message
		genPrompt bool
		want      string
	}{
		{"v1 one message", mixtralV1, three[:1], true, "<s>[INST] Hello [/INST]"},
		{"v1 three messages", mixtralV1, three, true, "<s>[INST] Hello [/INST]Hi there</s>[INST] How are you? [/INST]"},
		{"v3 three messages", mixtralV3, three, false, "<s> [INST] Hello [/INST] Hi there</s> [INST] How are you? [/INST]"},
		{"v3 with a system message", mixtralV3, withSystem, true, "<s> [INST] You are helpful.\n\nHello [/INST] Hi there</s> [INST] How are you? [/INST]"},
		{"chatml", chatML, three[:1], true, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"},
		{"chatml without the prompt", chatML, three[:1], false, "<|im_start|>user\nHello<|im_end|>\n"},
		{"content with template syntax", mixtralV1, []Message{{"user", "{{ eos_token }} {% if %}"}}, false, "<s>[INST] {{ eos_token }} {% if %} [/INST]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := Parse(tt.template, mistralTokens)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tpl.Render(tt.give, tt.genPrompt)
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v\nwant %q", got, err, tt.want)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name     string
		template string
		give     []Message
		want     string
	}{
		{"roles do not alternate", mixtralV1, []Message{{"user", "a"}, {"user", "b"}}, "Conversation roles must alternate"},
		{"system in v1", mixtralV1, []Message{{"system", "a"}, {"user", "b"}}, "Conversation roles must alternate"},
		{"tool role in v3", mixtralV3, []Message{{"user", "a"}, {"tool", "b"}}, "Only user and assistant roles are supported"},
		{"no messages in v3", mixtralV3, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := Parse(tt.template, mistralTokens)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tpl.Render(tt.give, true)
			if !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, %v; want an error with %q", got, err, tt.want)
			}
		})
	}
	if _, err := Parse("{% if %}that long template", mistralTokens); !errors.Is(err, ErrTemplate) || strings.Contains(err.Error(), "long template") {
		t.Errorf("a template that does not parse: %v (want the parser's reason, not the template)", err)
	}
	if _, err := Parse("{% include '/etc/passwd' %}", mistralTokens); err == nil {
		tpl, _ := Parse("{% include '/etc/passwd' %}", mistralTokens)
		if out, err := tpl.Render(nil, false); err == nil {
			t.Errorf("a template included a file: %q", out)
		}
	}
}

// TestRenderConcurrently: one Template serves every request at once (run with -race).
func TestRenderConcurrently(t *testing.T) {
	tpl, err := Parse(mixtralV3, mistralTokens)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			msg := fmt.Sprint("question ", i)
			got, err := tpl.Render([]Message{{"user", msg}}, true)
			if want := "<s> [INST] " + msg + " [/INST]"; err != nil || got != want {
				t.Errorf("got %q, %v; want %q", got, err, want)
			}
			if _, err := tpl.Render([]Message{{"assistant", msg}}, true); !errors.Is(err, ErrTemplate) {
				t.Errorf("an assistant first: %v", err)
			}
		})
	}
	wg.Wait()
}
