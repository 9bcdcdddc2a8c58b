// The /v1 client of the dashboard: same origin, `Authorization: Bearer <key>` on every
// request, the key kept in sessionStorage only (this tab, gone when it closes).

const KEY = "hetserve.apiKey";
const BASE = new URL(".", document.baseURI); // the service root, whatever its prefix

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

export function url(path) {
  return new URL(path.replace(/^\//, ""), BASE).toString();
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(res) {
  let detail = res.statusText;
  try { detail = (await res.json()).detail ?? detail; } catch { /* not JSON */ }
  if (res.status === 401) onUnauthorized(detail);
  return new ApiError(res.status, detail);
}

// fetch a /v1 route; JSON in (when `body` is a plain object) and out.
export async function api(path, { method = "GET", body, signal, raw = false } = {}) {
  const init = { method, signal, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url(path), init);
  if (!res.ok) throw await failure(res);
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

// Server-sent events with the Authorization header (EventSource cannot send one):
// fetch the stream and parse `event:`/`data:` blocks; `onEvent(name, data)` per event.
// Resolves when the stream ends or `signal` aborts it.
export async function streamEvents(path, onEvent, signal) {
  const res = await fetch(url(path), {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        let parsed = data.join("\n");
        try { parsed = JSON.parse(parsed); } catch { /* plain text */ }
        onEvent(name, parsed);
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") throw err;
  }
}

// Download an authorised binary (the ONNX file) through a blob URL.
export async function download(path, filename, signal) {
  const res = await api(path, { raw: true, signal });
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10_000);
  return blob.size;
}
