// The console's API client: HTTP calls, plain-word errors, and jobs run to their end. Decoding
// and the scoring maths are in vectors.js. No DOM here.

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

/** A job with no worker would wait silently for as long as none comes: say so. A running one
 * whose worker died is handed to the next worker once the visibility timeout has passed. */
async function queuedNote(job) {
  const status = job.status || "queued";
  if (TERMINAL.has(status) || (await workerReady()) !== false) return "";
  return status === "queued"
    ? "no worker is ready; it waits until one starts (Cancel to stop)"
    : "no worker is ready: if its worker stopped, the job runs again on the next one (Cancel to stop waiting)";
}

/** Seconds to wait before asking again, from a long-poll answered early (the API's threads that
 * may wait were all waiting): its Retry-After, else none. */
function pollPause(headers) {
  const after = Number(headers && headers.get("Retry-After"));
  return Number.isFinite(after) && after > 0 ? Math.min(after, WAIT_SECONDS) : 0;
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    const stop = () => {
      clearTimeout(timer);
      reject(new ApiError("stopped", 0, "aborted"));
    };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", stop);
      resolve();
    }, seconds * 1000);
    if (signal) signal.addEventListener("abort", stop, { once: true });
  });
}

/** Stop waiting for a job: cancel it while it is queued; a job that already finished is
 * returned (its results are there); a running one is left to run, and the error says where. */
async function stopJob(self, id) {
  try {
    await call("DELETE", self);
  } catch (e) {
    if (e instanceof ApiError && e.code === "job_finished") return (await call("GET", self)).data;
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
  let job = created;
  if (signal && signal.aborted) job = await stopJob(self, created.id);
  onStatus(job.status || "queued", await queuedNote(job));
  let wait = FIRST_WAIT_SECONDS;
  while (!TERMINAL.has(job.status)) {
    try {
      const answer = await call("GET", `${self}?wait=${wait}`, undefined, signal);
      job = answer.data;
      wait = Math.min(wait * 2, WAIT_SECONDS);
      const pause = TERMINAL.has(job.status) ? 0 : pollPause(answer.headers);
      if (pause) await sleep(pause, signal);  // asking again at once would only add to the load
    } catch (e) {
      if (!(signal && signal.aborted)) throw e;
      job = await stopJob(self, created.id);
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
