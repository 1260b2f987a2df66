// Usage: node chat.mjs BASE_URL API_KEY — prints one JSON line with what the SDK received.
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello in five words." }];

const resp = await client.chat.completions.create({ model: "smollm2", messages, max_tokens: 12, temperature: 0 });

const stream = await client.chat.completions.create({
  model: "smollm2", messages, max_tokens: 12, temperature: 0, stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let finish = null;
let usage = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
  usage = chunk.usage ?? usage;
}

let notFound = null;
try {
  await client.chat.completions.create({ model: "no-such-model", messages });
} catch (err) {
  notFound = { status: err.status, code: err.code };
}

console.log(JSON.stringify({
  content: resp.choices[0].message.content, finish: resp.choices[0].finish_reason, usage: resp.usage,
  streamed, streamFinish: finish, streamUsage: usage, notFound,
}));
