// Talking to this server's public API, as any client would, with the key kept in session storage.

const KEY_STORAGE = "hidream.apiKey";

export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

let onUnauthorized = () => {};

/** Called with the server's message whenever a request is refused for want of a (valid) key. */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Key ${key}`, ...extra } : { ...extra };
}

/** Any dialect's error body as one readable line. */
export function errorMessage(body, status) {
  if (body && typeof body === "object") {
    const detail = body.detail ?? body.error?.message ?? body.message;
    if (Array.isArray(detail)) {
      return detail
        .map((item) => {
          const field = (item.loc || []).filter((part) => !["body", "query", "header"].includes(part)).join(".");
          return field ? `${field}: ${item.msg}` : item.msg;
        })
        .join("; ");
    }
    if (detail) return String(detail);
  }
  return `HTTP ${status}`;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return text;
  }
}

/** fetch with the key; JSON in and out; throws ApiError for any status >= 400. */
export async function request(url, { method = "GET", json, body, extraHeaders, signal } = {}) {
  const init = { method, headers: headers(extraHeaders), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  const parsed = await readBody(response);
  if (response.status >= 400) {
    const message = errorMessage(parsed, response.status);
    if (response.status === 401) onUnauthorized(message);
    throw new ApiError(response.status, message, parsed && parsed.detail);
  }
  return parsed;
}

/**
 * Follow one request (GET /v1/requests/{id}/stream, server-sent events) until the server closes the
 * stream: each event is the request's summary with the log lines added since the last one, and its
 * progress as {step, total}. Read with fetch: EventSource cannot send a key.
 */
export async function streamRequest(requestId, onEvent, signal) {
  const response = await fetch(`/v1/requests/${encodeURIComponent(requestId)}/stream`, { headers: headers(), signal });
  if (response.status >= 400) {
    const body = await readBody(response);
    if (response.status === 401) onUnauthorized(errorMessage(body, response.status));
    throw new ApiError(response.status, errorMessage(body, response.status));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

/** Store a local file with fal's upload API; the URL it answers goes into an image input. */
export async function uploadFile(file) {
  const stored = await request("/files/upload", {
    method: "POST",
    body: file,
    extraHeaders: { "Content-Type": file.type || "application/octet-stream", "X-Fal-File-Name": file.name },
  });
  return stored.access_url;
}
