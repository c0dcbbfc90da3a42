// The official OpenAI Node SDK against a pregate worker (cmd/pregate's TestUpDemoServes runs it
// with BASE_URL and MODEL): completions, streaming, stop, logprobs, chat (whole and streamed), and
// errors as the SDK's own types. It prints
// one JSON object of results; the Go test asserts them.
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY || 'none', maxRetries: 0 });
const model = process.env.MODEL;
const out = {};

const c = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 6, temperature: 0 });
out.completion = { text: c.choices[0].text, finish: c.choices[0].finish_reason, usage: c.usage, object: c.object };

const ids = await client.completions.create({ model, prompt: [1, 2, 3], max_tokens: 4, temperature: 0 });
out.tokenIds = { finish: ids.choices[0].finish_reason, completionTokens: ids.usage.completion_tokens };

let streamed = '', chunks = 0, finish = null, usage = null;
const stream = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 6, temperature: 0,
  stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  for (const ch of chunk.choices) {
    streamed += ch.text || '';
    if (ch.finish_reason) finish = ch.finish_reason;
  }
}
out.stream = { text: streamed, chunks, finish, usage };

// stop: the whole completion's text, cut before its second word.
const word = out.completion.text.trim().split(/\s+/)[1];
if (word) {
  const st = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 6, temperature: 0, stop: [word] });
  out.stop = { word, text: st.choices[0].text, finish: st.choices[0].finish_reason };
}

const lp = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 3, temperature: 0, logprobs: 2 });
out.logprobs = { tokens: lp.choices[0].logprobs.tokens, tokenLogprobs: lp.choices[0].logprobs.token_logprobs,
  top: lp.choices[0].logprobs.top_logprobs.map((t) => Object.keys(t).length) };

const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 5, temperature: 0 });
out.chat = { role: chat.choices[0].message.role, content: chat.choices[0].message.content, finish: chat.choices[0].finish_reason,
  object: chat.object, usage: chat.usage };
let chatStreamed = '', chatRole = null, chatUsage = null;
const cs = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 5, temperature: 0,
  stream: true, stream_options: { include_usage: true } });
for await (const chunk of cs) {
  if (chunk.usage) chatUsage = chunk.usage;
  for (const ch of chunk.choices) {
    if (ch.delta.role) chatRole = ch.delta.role;
    chatStreamed += ch.delta.content || '';
  }
}
out.chatStream = { role: chatRole, content: chatStreamed, usage: chatUsage };

async function errorOf(f) {
  try { await f(); return null; } catch (e) {
    return { name: e.constructor.name, status: e.status, isAPIError: e instanceof OpenAI.APIError };
  }
}
out.unknownModel = await errorOf(() => client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 }));
out.badRequest = await errorOf(() => client.completions.create({ model, prompt: 'x', max_tokens: -1 }));
out.unsupported = await errorOf(() => client.completions.create({ model, prompt: 'x', max_tokens: 1, best_of: 3 }));

console.log(JSON.stringify(out));
