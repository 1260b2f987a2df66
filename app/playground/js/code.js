// "Copy as code": the current request as curl, Python (openai SDK) and JavaScript (openai SDK),
// with the server's base URL and $API_KEY in place of the key.

// Parameters the Python SDK's chat.completions.create() takes by name; others go in extra_body.
const PYTHON_PARAMS = new Set(["model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
  "stop", "seed", "n", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls", "response_format",
  "reasoning_effort", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "user"]);

function pyValue(value, indent) {
  const pad = " ".repeat(indent + 4), close = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + pyValue(v, indent + 4)).join(",\n")},\n${close}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${pyValue(v, indent + 4)}`).join(",\n")},\n${close}}`;
}

export function curl(baseUrl, body, sessionId) {
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  const session = sessionId ? `  -H "X-Session-ID: ${sessionId}" \\\n` : "";
  return `curl ${baseUrl}/v1/chat/completions \\\n  -H "Authorization: Bearer $API_KEY" \\\n` +
    `  -H "Content-Type: application/json" \\\n${session}  -d '${json}'`;
}

export function python(baseUrl, body, sessionId) {
  const args = [], extra = {};
  for (const [key, value] of Object.entries(body)) {
    if (PYTHON_PARAMS.has(key)) args.push(`    ${key}=${pyValue(value, 4)},`);
    else extra[key] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${pyValue(extra, 4)},`);
  if (sessionId) args.push(`    extra_headers={"X-Session-ID": ${JSON.stringify(sessionId)}},`);
  const head = `import os\n\nfrom openai import OpenAI\n\n` +
    `client = OpenAI(base_url="${baseUrl}/v1", api_key=os.environ["API_KEY"])\n`;
  const call = `client.chat.completions.create(\n${args.join("\n")}\n)`;
  if (body.stream) {
    return `${head}stream = ${call}\nfor chunk in stream:\n` +
      `    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)\nprint()\n`;
  }
  return `${head}resp = ${call}\nprint(resp.choices[0].message.content)\n`;
}

export function javascript(baseUrl, body, sessionId) {
  const options = sessionId ? `, {\n  headers: { "X-Session-ID": ${JSON.stringify(sessionId)} },\n}` : "";
  const head = `import OpenAI from "openai";\n\n` +
    `const client = new OpenAI({ baseURL: "${baseUrl}/v1", apiKey: process.env.API_KEY });\n`;
  const call = `await client.chat.completions.create(${JSON.stringify(body, null, 2)}${options})`;
  if (body.stream) {
    return `${head}const stream = ${call};\nfor await (const chunk of stream) {\n` +
      `  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");\n}\n`;
  }
  return `${head}const resp = ${call};\nconsole.log(resp.choices[0].message.content);\n`;
}

export const GENERATORS = { curl, python, javascript };
