// Talking to tsagent: the Prometheus-compatible API, optional endpoints, /metrics, live streams.
//
// Every URL is relative, so the page works at "/", at "/dashboard" and behind a reverse
// proxy that serves tsagent under a path prefix. Credentials: when the read group has
// basic_auth the browser's own prompt caches them; for bearer tokens (which a browser
// cannot send by itself) the page asks once and keeps the header in sessionStorage.

const AUTH_KEY = "tsagent.authorization";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

let authWaiter = null; // set by the app: () => Promise<void>, resolved after sign-in

export function onUnauthorized(fn) {
  authWaiter = fn;
}

export function setAuthorization(value) {
  if (value) sessionStorage.setItem(AUTH_KEY, value);
  else sessionStorage.removeItem(AUTH_KEY);
}

function headers(extra) {
  const h = new Headers(extra || {});
  const auth = sessionStorage.getItem(AUTH_KEY);
  if (auth) h.set("Authorization", auth);
  return h;
}

export function url(path, params) {
  const u = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.searchParams.append(k, x));
    else u.searchParams.set(k, String(v));
  }
  return u;
}

// fetch with the stored credentials; a 401 asks for credentials once and retries.
export async function request(path, params, init) {
  for (let attempt = 0; ; attempt++) {
    const resp = await fetch(url(path, params), { ...init, headers: headers(init && init.headers) });
    if (resp.status === 401 && attempt === 0 && authWaiter) {
      await authWaiter();
      continue;
    }
    return resp;
  }
}

// A Prometheus API call: returns `data`, throws ApiError with the server's message.
export async function prom(path, params, init) {
  const resp = await request(path, params, init);
  let body = null;
  try {
    body = await resp.json();
  } catch {
    throw new ApiError(`${path}: HTTP ${resp.status}`, resp.status);
  }
  if (!resp.ok || body.status !== "success") {
    throw new ApiError(body.error || `${path}: HTTP ${resp.status}`, resp.status);
  }
  return body.data;
}

// Optional endpoints come from plugins that may not be loaded: an endpoint "exists" unless
// it answers 404 (a probe without parameters gets 400, 401, 405... from a real one).
const features = new Map();

export function feature(path) {
  if (!features.has(path)) {
    const ctrl = new AbortController();
    const probe = request(path, {}, { signal: ctrl.signal })
      .then((resp) => resp.status !== 404)
      .catch(() => false)
      .finally(() => ctrl.abort()); // a stream would otherwise stay open
    features.set(path, probe);
  }
  return features.get(path);
}

// --- Prometheus text exposition, enough for /metrics ---------------------------------------

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseMetricsText(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(LABEL)) {
        labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
      }
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

export async function scrapeSelf() {
  const resp = await request("metrics", {}, { headers: { Accept: "text/plain" } });
  if (!resp.ok) throw new ApiError(`/metrics: HTTP ${resp.status}`, resp.status);
  return parseMetricsText(await resp.text());
}

// --- Server-Sent Events over fetch (so the Authorization header goes along) -------------------

export function sse(path, params, onEvent, onEnd) {
  const ctrl = new AbortController();
  (async () => {
    try {
      const resp = await request(path, params, {
        signal: ctrl.signal,
        headers: { Accept: "text/event-stream" },
      });
      if (!resp.ok || !resp.body) throw new ApiError(`${path}: HTTP ${resp.status}`, resp.status);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) {
            let payload = data.join("\n");
            try {
              payload = JSON.parse(payload);
            } catch {
              /* keep the text */
            }
            onEvent(event, payload);
          }
        }
      }
      onEnd(null);
    } catch (err) {
      if (!ctrl.signal.aborted) onEnd(err);
    }
  })();
  return () => ctrl.abort();
}
