// Talking to the server: the same routes and headers any OpenAI client uses.

export function requestHeaders(apiKey, sessionId) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (sessionId) headers["X-Session-ID"] = sessionId;
  return headers;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error) message = `${response.status}: ${body.error.message}`;
  } catch { /* not JSON: keep the status line */ }
  return new Error(message);
}

export async function listModels(apiKey) {
  const response = await fetch("/v1/models", { headers: requestHeaders(apiKey) });
  if (!response.ok) throw await failure(response);
  return (await response.json()).data;
}

export async function complete(apiKey, sessionId, body, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: requestHeaders(apiKey, sessionId), body: JSON.stringify(body), signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Yields each chunk of a streamed completion; an error event in the stream is thrown.
export async function* streamChunks(apiKey, sessionId, body, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: requestHeaders(apiKey, sessionId), body: JSON.stringify(body), signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        yield chunk;
      }
    }
  }
}

// The server's verdict on a request body, without generating: null if it passes, else its OpenAI error.
export async function checkRequest(apiKey, body) {
  const response = await fetch("/v1/playground/check", {
    method: "POST", headers: requestHeaders(apiKey), body: JSON.stringify(body),
  });
  if (response.ok) return null;
  try {
    return (await response.json()).error;
  } catch {
    return { message: `${response.status} ${response.statusText}`, param: null };
  }
}
