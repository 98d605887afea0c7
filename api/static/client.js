// The console's API client: HTTP calls, plain-word errors, decoding of job results, and the
// scoring maths (the same definitions as FlagEmbedding's compute_score). No DOM here.

export const KEY_STORAGE = "bge-m3.api-key";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
/** Seconds one long-poll may wait; the API bounds it at 30 too. */
export const WAIT_SECONDS = 30;
/** Seconds the first long-poll waits. A long-poll answers at the job's end, so the page learns a
 * queued job has started only when one returns: the waits start short and double up to
 * WAIT_SECONDS, so "running" shows within a second or two of the start. */
export const FIRST_WAIT_SECONDS = 1;

export class ApiError extends Error {
  /** ``link``: a URL the message points to (shown as a link after it), or "". */
  constructor(message, status = 0, code = "", link = "") {
    super(message);
    this.status = status;
    this.code = code;
    this.link = link;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function errorText(data, raw) {
  if (data && typeof data === "object") {
    const err = data.error;
    if (err && typeof err === "object" && err.message) return String(err.message);
    if (typeof err === "string") return err;
    for (const k of ["reason", "message", "detail"]) if (data[k]) return String(data[k]);
  }
  return raw && raw.length < 300 && !raw.trimStart().startsWith("<") ? raw.trim() : "";
}

/** One sentence a person can act on, from an HTTP status and the API's error body. */
export function plainError(status, data, raw, headers) {
  const msg = errorText(data, raw);
  const tail = msg ? `: ${msg}` : "";
  switch (status) {
    case 400: return `the request was not accepted${tail}`;
    case 401: return "the API key is missing or wrong: enter it in the key field at the top";
    case 403: return `this API key may not do that${tail}`;
    case 404: return `not found${tail}`;
    case 413: return `the request is too large${tail}`;
    case 422: return `a text could not be embedded${tail}`;
    case 429: {
      const after = headers && headers.get("Retry-After");
      return `the queue is full${after ? `; try again in ${after} s` : "; try again shortly"}${tail}`;
    }
    case 503: return `the service is not ready${tail}`;
    case 504: return `the API timed out waiting for a worker${tail}`;
    default: return `the API answered ${status}${tail || " with an unexpected error"}`;
  }
}

export async function call(method, path, body, signal) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, {
      method, headers, cache: "no-store", signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (signal && signal.aborted) throw new ApiError("stopped", 0, "aborted");
    throw new ApiError("cannot reach the API: the server is down or the network failed", 0, "network");
  }
  let raw;
  try {
    raw = await res.text();
  } catch (e) {  // the body was cut: aborted by the caller, or the connection dropped
    if (signal && signal.aborted) throw new ApiError("stopped", 0, "aborted");
    throw new ApiError("cannot reach the API: the connection dropped", 0, "network");
  }
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const code = data && data.error && typeof data.error === "object" ? data.error.code || "" : "";
    throw new ApiError(plainError(res.status, data, raw, res.headers), res.status, code);
  }
  return { status: res.status, data, raw, headers: res.headers };
}

/** Whether some verified worker is ready (GET /readyz); null when that cannot be told. */
async function workerReady() {
  try {
    const res = await fetch("/readyz", { cache: "no-store" });
    return res.ok;
  } catch (e) {
    return null;
  }
}

/** A queued job with no worker would wait silently for as long as none comes: say so. */
async function queuedNote(job) {
  if ((job.status || "queued") !== "queued" || (await workerReady()) !== false) return "";
  return "no worker is ready; it waits until one starts (Cancel to stop)";
}

/** Stop waiting for a job: cancel it while it is queued, else leave it running and say where. */
async function stopJob(self, id) {
  try {
    await call("DELETE", self);
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) {
      throw new ApiError("stopped waiting; the job had already started and goes on:", 0, "aborted", self);
    }
    throw e;
  }
  throw new ApiError(`the job was cancelled (${id})`, 0, "cancelled");
}

/** Submit a job and long-poll it to a terminal state; onStatus sees each intermediate status
 * (and a note when it waits with no worker ready). Aborting ``signal`` cancels the job. */
export async function runJob(body, onStatus = () => {}, signal = undefined) {
  // The submit is not aborted: a job the server created while the page stopped listening would
  // run unseen. The abort is acted on once its id is known.
  const { data: created } = await call("POST", "/v1/jobs", body);
  const self = (created.links && created.links.self) || `/v1/jobs/${encodeURIComponent(created.id)}`;
  if (signal && signal.aborted) await stopJob(self, created.id);
  let job = created;
  onStatus(job.status || "queued", await queuedNote(job));
  let wait = FIRST_WAIT_SECONDS;
  while (!TERMINAL.has(job.status)) {
    try {
      ({ data: job } = await call("GET", `${self}?wait=${wait}`, undefined, signal));
      wait = Math.min(wait * 2, WAIT_SECONDS);
    } catch (e) {
      if (signal && signal.aborted) await stopJob(self, created.id);
      throw e;
    }
    onStatus(job.status, await queuedNote(job));
  }
  if (job.status === "failed") {
    const err = job.error || {};
    throw new ApiError(`the job failed${err.message ? `: ${err.message}` : ""}`, 200, err.code || "");
  }
  if (job.status === "cancelled") throw new ApiError("the job was cancelled", 200, "cancelled");
  return job;
}

// ---- decoding -------------------------------------------------------------------------------

function b64bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function half(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Little-endian float32/float16 values from base64. */
export function decodeFloats(text, dtype = "float32") {
  const bytes = b64bytes(text);
  const view = new DataView(bytes.buffer);
  const out = [];
  if (dtype === "float16") {
    for (let i = 0; i + 1 < bytes.length; i += 2) out.push(half(view.getUint16(i, true)));
  } else {
    for (let i = 0; i + 3 < bytes.length; i += 4) out.push(view.getFloat32(i, true));
  }
  return out;
}

/** A dense vector: a float list, base64 float32, or the packed {shape, dtype, data} form. */
export function vector(value) {
  if (value == null) return null;
  if (Array.isArray(value)) return value.map(Number);
  if (typeof value === "string") return decodeFloats(value, "float32");
  if (typeof value === "object" && "data" in value) return matrix(value).flat();
  return null;
}

/** ColBERT rows: a list of lists, or {shape, dtype, data} with data as base64 or a flat list. */
export function matrix(value) {
  if (value == null) return null;
  if (Array.isArray(value)) return value.map((row) => (Array.isArray(row) ? row.map(Number) : [Number(row)]));
  const shape = value.shape || [];
  let flat = value.data;
  if (typeof flat === "string") flat = decodeFloats(flat, value.dtype || "float32");
  else if (Array.isArray(flat) && Array.isArray(flat[0])) return flat.map((r) => r.map(Number));
  flat = (flat || []).map(Number);
  const rows = shape.length ? shape[0] : 1;
  const width = shape.length > 1 ? shape[1] : flat.length;
  const out = [];
  for (let r = 0; r < rows; r++) out.push(flat.slice(r * width, (r + 1) * width));
  return out;
}

/** Sparse weights as [{id, token, weight}], from {indices, values, tokens?} or an {id: weight} map. */
export function sparseEntries(value) {
  if (value == null) return null;
  if (Array.isArray(value.indices)) {
    const tokens = Array.isArray(value.tokens) ? value.tokens : null;
    return value.indices.map((id, i) => ({
      id: String(id), token: tokens ? tokens[i] : null, weight: Number(value.values[i]),
    }));
  }
  return Object.entries(value).map(([id, w]) => ({ id, token: null, weight: Number(w) }));
}

/** The per-text list inside a job's result, whatever envelope the API used. */
export function perText(result) {
  if (Array.isArray(result)) return result;
  if (result && typeof result === "object") {
    for (const k of ["data", "results", "embeddings", "items"]) if (Array.isArray(result[k])) return result[k];
  }
  return [];
}

// ---- scores (FlagEmbedding's definitions) ---------------------------------------------------

export function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

/** compute_lexical_matching_score: the sum of weight products over shared token ids. */
export function lexical(a, b) {
  const other = new Map(b.map((e) => [e.id, e.weight]));
  let s = 0;
  for (const e of a) if (other.has(e.id)) s += e.weight * other.get(e.id);
  return s;
}

/** colbert_score: for each query vector the best document dot product, averaged over the query. */
export function maxsim(q, p) {
  if (!q.length || !p.length) return 0;
  let total = 0;
  for (const qv of q) {
    let best = -Infinity;
    for (const pv of p) {
      let d = 0;
      for (let i = 0; i < qv.length; i++) d += qv[i] * pv[i];
      if (d > best) best = d;
    }
    total += best;
  }
  return total / q.length;
}

export function hybrid(scores, weights) {
  const sum = weights[0] + weights[1] + weights[2];
  if (!sum) return 0;
  return (weights[0] * scores.dense + weights[1] * scores.sparse + weights[2] * scores.colbert) / sum;
}

/** Timestamps may be epoch seconds or ISO strings; answer milliseconds since the epoch. */
export function epochMs(value) {
  if (value == null || value === "") return null;
  if (typeof value === "number") return value > 1e12 ? value : value * 1000;
  const n = Number(value);
  if (!Number.isNaN(n)) return epochMs(n);
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}
