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
/** Seconds the page keeps asking about a job while the API fails to answer (Redis restarting, a
 * proxy's 502/504, a dropped connection) before it gives up and links to the job: the job is not
 * lost when the page cannot see it, and a Run again would only make a duplicate. */
export const POLL_RETRY_SECONDS = 120;
/** Longest pause between two asks while polls fail and no Retry-After says otherwise. */
const MAX_BACKOFF_SECONDS = 8;
/** Statuses a poll may meet while the job itself is fine: ask again, do not give up. */
const TRANSIENT = new Set([429, 502, 503, 504]);
/** Times a synchronous call answered 503 busy is asked again before the error is shown. */
export const BUSY_RETRIES = 3;
/** What an HTTP header can carry of a key: printable ASCII, no spaces. fetch() throws before
 * sending on anything else (a zero-width space pasted with the key), which would read as "the
 * API is down". */
const KEY_PATTERN = /^[\x21-\x7e]+$/;

export class ApiError extends Error {
  /** ``link``: a URL the message points to (shown as a link after it), or "".
   * ``retryAfter``: the answer's Retry-After in seconds, or null. */
  constructor(message, status = 0, code = "", link = "", retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.link = link;
    this.retryAfter = retryAfter;
  }
}

export function validKey(value) {
  return KEY_PATTERN.test(value);
}

/** The stored key, or "" when there is none or it could not be sent (stored by an older page). */
export function apiKey() {
  const key = sessionStorage.getItem(KEY_STORAGE) || "";
  return validKey(key) ? key : "";
}

/** Keep ``value`` as the key (or forget it when empty); false, and nothing kept, when no HTTP
 * header could carry it. */
export function setApiKey(value) {
  if (value && !validKey(value)) {
    sessionStorage.removeItem(KEY_STORAGE);  // the old key is not what the user means any more
    return false;
  }
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  else sessionStorage.removeItem(KEY_STORAGE);
  return true;
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

function errorCode(data) {
  return data && data.error && typeof data.error === "object" ? String(data.error.code || "") : "";
}

/** A 503 by its cause: the API's error code tells a busy API from a missing worker or Redis. */
function unavailable(code, tail, after) {
  switch (code) {
    case "busy": return `the API is busy${after == null ? "; try again shortly" : `; try again in ${after} s`}`;
    case "redis_unavailable": return `Redis is down${tail}`;
    case "no_ready_worker": return `no worker is ready${tail}`;
    default: return `the service is not ready${tail}`;
  }
}

/** Seconds from a Retry-After header (the seconds form, as the API sends it), or null. */
function retryAfterSeconds(headers) {
  const after = Number(headers && headers.get("Retry-After"));
  return Number.isFinite(after) && after >= 0 ? after : null;
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
    case 502: return `a proxy in front of the API got no answer from it${tail}`;
    case 503: return unavailable(errorCode(data), tail, retryAfterSeconds(headers));
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
    throw new ApiError(plainError(res.status, data, raw, res.headers), res.status, errorCode(data), "",
      retryAfterSeconds(res.headers));
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
  return Math.min(retryAfterSeconds(headers) || 0, WAIT_SECONDS);
}

/** Whether a failed poll says nothing about the job (the API, Redis or a proxy is unwell). */
function transient(e) {
  return e instanceof ApiError && (e.code === "network" || TRANSIENT.has(e.status));
}

/** Seconds before the ``failures``-th failed poll in a row is asked again: its Retry-After, else
 * 1, 2, 4 … up to MAX_BACKOFF_SECONDS. */
function backoff(e, failures) {
  if (e.retryAfter != null) return Math.min(Math.max(e.retryAfter, 0.5), WAIT_SECONDS);
  return Math.min(2 ** (failures - 1), MAX_BACKOFF_SECONDS);
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
    // The cancel did not reach the job (the API is down): say which job may still run.
    if (e instanceof ApiError) throw new ApiError(`the job could not be cancelled (${e.message}):`, e.status, e.code, self);
    throw e;
  }
  throw new ApiError(`the job was cancelled (${id})`, 0, "cancelled");
}

/** Seconds before a failed poll is asked again. A failure that is the job's or the request's
 * (404, 401 …) is thrown as it is; one that has lasted POLL_RETRY_SECONDS is thrown with a link
 * to the job, which may well go on. */
function pollRetry(e, failures, failingSince, self) {
  if (!transient(e)) throw e;
  const pause = backoff(e, failures);
  const failing = (Date.now() - failingSince) / 1000;
  if (failing + pause <= POLL_RETRY_SECONDS) return pause;
  throw new ApiError(`${e.message}; the page stopped asking after ${Math.round(failing)} s, and the job may go on:`,
    e.status, e.code, self);
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
  let failures = 0, failingSince = 0, retryIn = 0;
  while (!TERMINAL.has(job.status)) {
    try {
      if (retryIn) await sleep(retryIn, signal);  // here, so Cancel during the pause cancels
      const answer = await call("GET", `${self}?wait=${wait}`, undefined, signal);
      job = answer.data;
      failures = 0;
      retryIn = 0;
      wait = Math.min(wait * 2, WAIT_SECONDS);
      const pause = TERMINAL.has(job.status) ? 0 : pollPause(answer.headers);
      if (pause) await sleep(pause, signal);  // asking again at once would only add to the load
    } catch (e) {
      if (!(signal && signal.aborted)) {
        if (!failures) failingSince = Date.now();
        retryIn = pollRetry(e, ++failures, failingSince, self);
        onStatus(job.status || "queued", `asking about it failed (${e.message}); asking again in ${retryIn} s`);
        continue;
      }
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

/** ``call``, asked again while the API answers 503 busy (it refuses before creating anything, so
 * another try is safe), at most BUSY_RETRIES times after its Retry-After; onBusy(seconds) sees
 * each pause. Aborting ``signal`` stops the pauses too. */
export async function callUnlessBusy(method, path, body, signal, onBusy = () => {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call(method, path, body, signal);
    } catch (e) {
      if (!(e instanceof ApiError && e.code === "busy" && attempt < BUSY_RETRIES)) throw e;
      const pause = Math.min(Math.max(e.retryAfter ?? 1, 0.5), MAX_BACKOFF_SECONDS);
      onBusy(pause);
      await sleep(pause, signal);
    }
  }
}
