// Tool definitions typed in the page, checked with the server's rules (tools/request.py) before sending.

const NAME = /^[a-zA-Z0-9_-]{1,64}$/;
export const MAX_TOOLS = 128;

// Returns {tools, error}: tools is null when the text is empty.
export function parseTools(text) {
  if (!text.trim()) return { tools: null, error: "" };
  let tools;
  try {
    tools = JSON.parse(text);
  } catch (error) {
    return { tools: null, error: `Not valid JSON: ${error.message}` };
  }
  if (!Array.isArray(tools)) return { tools: null, error: "'tools' must be a JSON array" };
  if (tools.length > MAX_TOOLS) return { tools: null, error: `'tools' has ${tools.length} entries; the limit is ${MAX_TOOLS}` };
  const seen = new Set();
  for (const [i, tool] of tools.entries()) {
    const where = `tools[${i}]`;
    if (typeof tool !== "object" || tool === null || Array.isArray(tool)) return { tools: null, error: `'${where}' must be an object` };
    if ((tool.type ?? "function") !== "function") return { tools: null, error: `'${where}.type' must be "function"` };
    const fn = tool.function;
    if (typeof fn !== "object" || fn === null) return { tools: null, error: `'${where}.function' is required` };
    if (typeof fn.name !== "string" || !NAME.test(fn.name)) {
      return { tools: null, error: `'${where}.function.name' must match ^[a-zA-Z0-9_-]{1,64}$, got ${JSON.stringify(fn.name)}` };
    }
    if (seen.has(fn.name)) return { tools: null, error: `'${where}.function.name': the name '${fn.name}' is used by more than one tool` };
    seen.add(fn.name);
    const params = fn.parameters;
    if (params !== undefined && params !== null) {
      if (typeof params !== "object" || Array.isArray(params)) return { tools: null, error: `'${where}.function.parameters' must be a JSON Schema object` };
      if (params.type !== undefined && params.type !== "object") {
        return { tools: null, error: `'${where}.function.parameters' must describe a JSON object ("type": "object"), got type ${JSON.stringify(params.type)}` };
      }
    }
  }
  return { tools, error: "" };
}
