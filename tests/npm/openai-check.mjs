// Drives the staged HTTP gateway with the official `openai` npm package,
// unmodified: env BASE_URL (http://127.0.0.1:PORT/v1), API_KEY, PROMPT, SEED.
// Prints one JSON object with what the package returned; the calling shell
// test (tests/http-openai.test.sh) compares it with staged-client.
import OpenAI from 'openai';

const baseURL = process.env.BASE_URL;
const client = new OpenAI({ baseURL, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 60000 });
const seed = Number(process.env.SEED);
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);
const model = out.models[0];

const chatParams = {
  model,
  messages: [{ role: 'user', content: process.env.PROMPT }],
  max_tokens: 40,
  seed,
};
const chat = await client.chat.completions.create(chatParams);
out.chat_text = chat.choices[0].message.content;
out.chat_finish = chat.choices[0].finish_reason;
out.chat_object = chat.object;
out.chat_usage = chat.usage;

const stream = await client.chat.completions.create({ ...chatParams, stream: true });
out.chat_stream_text = '';
out.chat_stream_chunks = 0;
for await (const chunk of stream) {
  out.chat_stream_chunks++;
  const c = chunk.choices[0];
  if (c?.delta?.content) out.chat_stream_text += c.delta.content;
  if (c?.finish_reason) out.chat_stream_finish = c.finish_reason;
}

// the package's own stream helper accumulates the message for us
const runner = client.chat.completions.stream({ ...chatParams });
const fin = await runner.finalChatCompletion();
out.chat_helper_text = fin.choices[0].message.content;

const completionParams = { model, prompt: 'Once upon a time', max_tokens: 60, temperature: 0 };
const compl = await client.completions.create(completionParams);
out.completion_text = compl.choices[0].text;
out.completion_finish = compl.choices[0].finish_reason;
const cstream = await client.completions.create({ ...completionParams, stream: true });
out.completion_stream_text = '';
for await (const chunk of cstream) out.completion_stream_text += chunk.choices[0]?.text ?? '';

// errors surface as the package's typed errors
try {
  await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], n: 3 });
  out.bad_request_status = 200;
} catch (e) {
  out.bad_request_status = e.status;
  out.bad_request_class = e.constructor.name;
  out.bad_request_param = e.param ?? e.error?.param ?? null;
}
try {
  const bad = new OpenAI({ baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await bad.models.list();
  out.auth_status = 200;
} catch (e) {
  out.auth_status = e.status;
  out.auth_class = e.constructor.name;
}
console.log(JSON.stringify(out));
