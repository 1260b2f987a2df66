// The playground page: a conversation with the served model, its settings, and the request as code.
import { checkRequest, complete, listModels, streamChunks } from "./api.js";
import { GENERATORS } from "./code.js";
import { parseTools } from "./tools.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lodestar.apiKey";  // sessionStorage only: gone when the tab closes
const state = {
  messages: [],       // the conversation as OpenAI messages, system prompt excluded
  sentInSession: 0,   // with a session id: how many messages the server already holds
  images: [],         // data URLs attached to the next user message
  pendingCalls: [],   // tool calls of the last reply, waiting for results
  models: [],
  lang: "curl",
  busy: false,
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function numberOf(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

// The request the next Send would make (also what "Copy as code" shows).
function buildRequest(newMessages) {
  const system = $("system").value.trim();
  const sessionId = $("session").value.trim();
  let messages = [...state.messages, ...newMessages];
  if (sessionId) messages = messages.slice(state.sentInSession);  // the server keeps the rest
  if (system && !(sessionId && state.sentInSession)) messages = [{ role: "system", content: system }, ...messages];
  const body = { model: $("model").value, messages };
  const sampling = { temperature: numberOf("temperature"), top_p: numberOf("top_p"),
                     max_tokens: numberOf("max_tokens"), seed: numberOf("seed") };
  for (const [key, value] of Object.entries(sampling)) if (value !== undefined) body[key] = value;
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stop.length) body.stop = stop;
  const { tools } = parseTools($("tools").value);
  if (tools && tools.length) {
    body.tools = tools;
    body.tool_choice = $("tool_choice").value;
  }
  const reasoning = {};
  if ($("effort").value) reasoning.effort = $("effort").value;
  if (numberOf("reasoning_budget") !== undefined) reasoning.max_tokens = numberOf("reasoning_budget");
  if ($("reasoning_exclude").checked) reasoning.exclude = true;
  if (Object.keys(reasoning).length) body.reasoning = reasoning;
  if ($("stream").checked) {
    body.stream = true;
    body.stream_options = { include_usage: true };
  }
  return { body, sessionId };
}

function composedMessages() {
  const out = [];
  for (const call of state.pendingCalls) {
    const input = document.querySelector(`[data-call="${call.id}"]`);
    if (input && input.value.trim()) out.push({ role: "tool", tool_call_id: call.id, content: input.value.trim() });
  }
  const text = $("input").value.trim();
  if (state.images.length) {
    const parts = text ? [{ type: "text", text }] : [];
    for (const url of state.images) parts.push({ type: "image_url", image_url: { url } });
    out.push({ role: "user", content: parts });
  } else if (text) {
    out.push({ role: "user", content: text });
  }
  return out;
}

// Tools are checked twice as they are typed: at once in the page (JSON, names), then by the server with the
// chat route's own rules (valid and enforceable schemas, the model's tool format), shown beside the field.
let toolsCheck = 0;
function checkTools() {
  const local = parseTools($("tools").value);
  $("tools-error").textContent = local.error;
  clearTimeout(toolsCheck);
  if (local.error || !local.tools) return;
  const text = $("tools").value;
  toolsCheck = setTimeout(async () => {
    const { body } = buildRequest([{ role: "user", content: "check" }]);
    delete body.stream;
    delete body.stream_options;
    const error = await checkRequest($("api-key").value, body);
    if ($("tools").value !== text) return;  // typed on meanwhile: a newer check is coming
    const concerns = error && /^(tools|tool_choice)/.test(error.param || "");
    $("tools-error").textContent = concerns ? error.message : "";
  }, 300);
}

function updateCode() {
  const { body, sessionId } = buildRequest(composedMessages());
  $("code").textContent = GENERATORS[state.lang](location.origin, body, sessionId);
}

// -- rendering ------------------------------------------------------------------------------------

function messageElement(role) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  item.innerHTML = `<div class="role"></div><div class="body"></div>`;
  item.querySelector(".role").textContent = role;
  $("messages").append(item);
  return item;
}

// Text in the conversation can be edited in place: the next request (and the code) carries the edit.
function editable(element, save) {
  element.contentEditable = "plaintext-only";
  element.title = "click to edit";
  element.addEventListener("input", () => { save(element.textContent); updateCode(); });
}

function renderStored(message) {
  const item = messageElement(message.role);
  const body = item.querySelector(".body");
  const parts = typeof message.content === "string" ? [{ type: "text", text: message.content }] : message.content || [];
  for (const part of parts) {
    if (part.type === "text") {
      const text = document.createElement("div");
      text.className = "content";
      text.textContent = part.text;
      editable(text, (value) => {
        if (typeof message.content === "string") message.content = value;
        else part.text = value;
      });
      body.append(text);
    } else if (part.type === "image_url") {
      const image = document.createElement("img");
      image.src = part.image_url.url;
      image.alt = "attached image";
      body.append(image);
    }
  }
  if (message.role === "tool") item.querySelector(".role").textContent = `tool result (${message.tool_call_id})`;
}

// The assistant's reply as it streams: reasoning in a collapsible block, the answer, tool calls, stats.
class ReplyView {
  constructor() {
    this.item = messageElement("assistant");
    const body = this.item.querySelector(".body");
    this.reasoningBlock = document.createElement("details");
    this.reasoningBlock.className = "reasoning";
    this.reasoningBlock.innerHTML = "<summary>Reasoning</summary><div class=\"content\"></div>";
    this.reasoningBlock.hidden = true;
    this.answer = document.createElement("div");
    this.answer.className = "content answer";
    this.calls = document.createElement("div");
    this.stats = document.createElement("div");
    this.stats.className = "stats";
    body.append(this.reasoningBlock, this.answer, this.calls, this.stats);
  }

  reasoning(text) {
    this.reasoningBlock.hidden = false;
    this.reasoningBlock.querySelector(".content").textContent += text;
  }

  content(text) { this.answer.textContent += text; }

  toolCalls(calls) {
    this.calls.replaceChildren();
    for (const call of calls) {
      const block = document.createElement("div");
      block.className = "tool-call";
      block.textContent = `${call.function.name}(${call.function.arguments})`;
      const result = document.createElement("input");
      result.dataset.call = call.id;
      result.placeholder = `result of ${call.function.name} (sent with the next message)`;
      result.setAttribute("aria-label", `result of ${call.function.name}`);
      result.addEventListener("input", updateCode);
      block.append(document.createElement("br"), result);
      this.calls.append(block);
    }
  }

  showStats(usage, ttft, seconds) {
    if (!usage) return;
    const rate = usage.completion_tokens && seconds > ttft ? (usage.completion_tokens / (seconds - ttft)).toFixed(1) : "-";
    const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
    this.stats.textContent = `${usage.prompt_tokens} prompt tokens (${cached} cached) · ` +
      `${usage.completion_tokens} completion tokens · first token ${(ttft * 1000).toFixed(0)} ms · ${rate} tokens/s`;
    this.stats.dataset.cached = String(cached);
  }
}

// -- sending --------------------------------------------------------------------------------------

async function send(event) {
  event?.preventDefault();
  if (state.busy) return;
  const toolsCheck = parseTools($("tools").value);
  if (toolsCheck.error) { setStatus("Fix the tools first", true); return; }
  const fresh = composedMessages();
  if (!fresh.length) return;
  const { body, sessionId } = buildRequest(fresh);
  state.busy = true;
  $("send").disabled = true;
  setStatus("Generating…");
  fresh.forEach(renderStored);
  const view = new ReplyView();
  const started = performance.now();
  let ttft = null;
  const reply = { role: "assistant", content: "" };
  const calls = [];
  try {
    if (body.stream) {
      let usage = null;
      for await (const chunk of streamChunks($("api-key").value, sessionId, body)) {
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta;
        if (!delta) continue;
        if ((delta.content || delta.reasoning_content || delta.tool_calls) && ttft === null) ttft = (performance.now() - started) / 1000;
        if (delta.reasoning_content) view.reasoning(delta.reasoning_content);
        if (delta.content) { reply.content += delta.content; view.content(delta.content); }
        for (const piece of delta.tool_calls || []) {
          const call = calls[piece.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
          if (piece.id) call.id = piece.id;
          if (piece.function?.name) call.function.name += piece.function.name;
          if (piece.function?.arguments) call.function.arguments += piece.function.arguments;
          view.toolCalls(calls);
        }
      }
      view.showStats(usage, ttft ?? 0, (performance.now() - started) / 1000);
    } else {
      const result = await complete($("api-key").value, sessionId, body);
      const seconds = (performance.now() - started) / 1000;
      const message = result.choices[0].message;
      if (message.reasoning_content) view.reasoning(message.reasoning_content);
      reply.content = message.content || "";
      view.content(reply.content);
      calls.push(...(message.tool_calls || []));
      view.toolCalls(calls);
      view.showStats(result.usage, seconds, seconds);
    }
    if (calls.length) reply.tool_calls = calls;
    editable(view.answer, (value) => { reply.content = value; });
    state.messages.push(...fresh, reply);
    if (sessionId) state.sentInSession = state.messages.length;
    state.pendingCalls = calls;
    $("input").value = "";
    state.images = [];
    renderAttachments();
    setStatus("");
  } catch (error) {
    view.item.classList.add("failed");
    view.content(`⚠ ${error.message}`);
    setStatus(error.message, true);
  } finally {
    state.busy = false;
    $("send").disabled = false;
    updateCode();
  }
}

// -- images ---------------------------------------------------------------------------------------

function renderAttachments() {
  $("attachments").replaceChildren(...state.images.map((url, i) => {
    const image = document.createElement("img");
    image.src = url;
    image.alt = `image ${i + 1} to send`;
    image.title = "click to remove";
    image.addEventListener("click", () => { state.images.splice(i, 1); renderAttachments(); updateCode(); });
    return image;
  }));
}

function attach(files) {
  const model = currentModel();
  if (model && !model.vision) { setStatus(`${model.id} does not accept images`, true); return; }
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const reader = new FileReader();
    reader.onload = () => { state.images.push(reader.result); renderAttachments(); updateCode(); };
    reader.readAsDataURL(file);
  }
}

// -- set-up ---------------------------------------------------------------------------------------

async function loadModels() {
  try {
    state.models = await listModels($("api-key").value);
    $("model").replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
    setStatus("");
  } catch (error) {
    state.models = [];
    setStatus(`Cannot list models: ${error.message}`, true);
  }
  $("image-input").closest("label").hidden = !currentModel()?.vision;
  updateCode();
}

function clearConversation() {
  state.messages = [];
  state.sentInSession = 0;
  state.pendingCalls = [];
  state.images = [];
  $("messages").replaceChildren();
  renderAttachments();
  updateCode();
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem(KEY_STORAGE, $("api-key").value); loadModels(); });
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  $("clear").addEventListener("click", clearConversation);
  $("session").addEventListener("change", () => { state.sentInSession = 0; updateCode(); });
  $("tools").addEventListener("input", checkTools);
  $("tool_choice").addEventListener("change", checkTools);
  for (const id of ["system", "input", "model", "temperature", "top_p", "max_tokens", "stop", "seed", "stream",
                    "effort", "reasoning_budget", "reasoning_exclude", "tools", "tool_choice", "session"]) {
    $(id).addEventListener("input", updateCode);
    $(id).addEventListener("change", updateCode);
  }
  $("image-input").addEventListener("change", (e) => { attach(e.target.files); e.target.value = ""; });
  document.addEventListener("paste", (e) => attach([...e.clipboardData.files]));
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => { e.preventDefault(); document.body.classList.remove("dragging"); attach(e.dataTransfer.files); });
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => {
      state.lang = tab.dataset.lang;
      for (const other of document.querySelectorAll(".tabs button")) other.setAttribute("aria-selected", String(other === tab));
      updateCode();
    });
  }
  $("copy").addEventListener("click", () => navigator.clipboard?.writeText($("code").textContent));
  loadModels();
}

init();
