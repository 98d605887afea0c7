// The status strip: readiness, workers, device, model, manifest digest and queue depth, from
// /readyz, /v1/models and (for the queue depth, when nothing else gives it) /metrics.
import { ApiError, apiKey, call } from "./client.js";
import { $ } from "./dom.js";

/** Milliseconds from the end of one refresh of the strip to the start of the next; a dead
 * worker's record expires in ~15 s anyway. Counted from the end, so slow answers never pile up. */
export const STATUS_INTERVAL_MS = 2000;
/** Milliseconds one refresh may take before it is given up, so a request that never answers
 * cannot stop the refreshes. */
export const STATUS_TIMEOUT_MS = 10_000;
/** The longest wait between refreshes while the API keeps saying the same "not ready": the wait
 * doubles from STATUS_INTERVAL_MS up to this, and is STATUS_INTERVAL_MS again once the answer
 * changes or a refresh is asked for (a new key). Each refused answer is a red line in the
 * browser's console, and an idle tab need not ask every 2 s. */
export const STATUS_BACKOFF_MAX_MS = 8000;
/** Milliseconds before /v1/models is asked again with a key it refused (or with no key): until
 * the key changes it can only refuse again. */
export const KEY_RECHECK_MS = 30_000;

let generation = 0; // a refresh started later wins: an older one's answers are dropped
let refused = null; // { key, at }: the key /v1/models last answered 401 to, and when

async function get(path, signal) {
  try {
    const r = await call("GET", path, undefined, signal);
    return { ok: true, status: r.status, data: r.data, raw: r.raw };
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    return { ok: false, status: e.status, message: e.message };
  }
}

async function getBody(path, signal) {
  // /readyz answers 503 with a useful body; fetch directly so that body is kept. It and /metrics
  // are open to all: no key is sent, so a key the API refuses cannot hide the readiness.
  try {
    const res = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" }, signal });
    const raw = await res.text();
    let data = null;
    try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
    return { ok: res.ok, status: res.status, data, raw };
  } catch (e) {
    return { ok: false, status: 0, data: null, raw: "" };
  }
}

function workerList(data) {
  if (Array.isArray(data)) return data;
  if (!data || typeof data !== "object") return [];
  for (const k of ["workers", "data", "models"]) if (Array.isArray(data[k])) return data[k];
  return [];
}

const first = (obj, names) => {
  for (const n of names) {
    const v = n.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), obj);
    if (v != null && v !== "") return v;
  }
  return null;
};

const uniq = (values) => [...new Set(values.filter((v) => v != null && v !== ""))];

function reason(data) {
  if (!data || typeof data !== "object") return "";
  if (data.error && typeof data.error === "object") return data.error.message || "";
  return data.reason || data.message || (typeof data.error === "string" ? data.error : "");
}

function queueFromMetrics(text) {
  if (!text) return null;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = line.match(/^([A-Za-z_:][\w:]*queue_depth[\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (m) return Number(m[3]);
  }
  return null;
}

function set(id, text, state) {
  const node = $(id);
  // Only a change: the strip is a live region, and a screen reader would read it all again.
  if (node.textContent !== text) node.textContent = text;
  if (state) node.dataset.state = state;
}

/** The max_length fields' bound: the least that every ready worker takes (a deployment may set
 * BGE_M3_MAX_LENGTH below the page's default of 512, FlagEmbedding's); a value the user did not
 * type is lowered to it, so the defaults are never refused. */
function applyMaxLength(workers) {
  const limits = workers.map((w) => Number(w.max_length)).filter((n) => Number.isInteger(n) && n > 0);
  if (!limits.length) return;
  const limit = Math.min(...limits);
  for (const id of ["#max-length", "#score-max-length"]) {
    const input = $(id);
    input.max = String(limit);
    if (!input.dataset.edited && Number(input.value) > limit) input.value = String(limit);
  }
}

export async function refreshStatus() {
  const mine = ++generation;
  const signal = AbortSignal.timeout(STATUS_TIMEOUT_MS);
  const key = apiKey();
  const known = refused && refused.key === key && Date.now() - refused.at < KEY_RECHECK_MS;
  const [ready, models] = await Promise.all([getBody("/readyz", signal),
    known ? { ok: false, status: 401 } : get("/v1/models", signal)]);
  if (mine !== generation) return null;
  if (!known) refused = models.status === 401 ? { key, at: Date.now() } : null;
  const workers = models.ok ? workerList(models.data) : [];
  const count = first(ready.data, ["workers", "error.workers", "ready_workers"]);
  const readyCount = typeof count === "number" ? count : workers.length;
  // /readyz is open to all; the routes behind it are not when keys are configured.
  const keyNeeded = models.status === 401;
  const redisDown = first(ready.data, ["error.code"]) === "redis_unavailable"
    || first(ready.data, ["redis", "error.redis"]) === false;
  if (ready.status === 0) {
    set("#st-ready", signal.aborted ? "the API did not answer in time" : "cannot reach the API", "down");
  } else if (ready.ok && keyNeeded) {
    set("#st-ready", apiKey() ? "ready, but the API key is wrong" : "ready; an API key is needed: enter it at the top", "down");
  } else if (ready.ok) {
    set("#st-ready", "ready", "ok");
  } else if (ready.status === 401) {
    set("#st-ready", "API key needed", "down");
  } else {
    const why = reason(ready.data);
    const head = redisDown ? "Redis is down" : readyCount ? "not ready" : "no worker ready";
    set("#st-ready", why ? `${head}: ${why}` : head, "down");
  }
  set("#st-workers", `workers: ${readyCount}`);
  applyMaxLength(workers);
  const devices = uniq(workers.map((w) => {
    const dev = first(w, ["device", "device_type"]);
    const name = first(w, ["device_name", "gpu", "gpu_name"]);
    return name && dev && !String(dev).includes(name) ? `${dev} (${name})` : dev || name;
  }));
  set("#st-device", `device: ${devices.join(", ") || "—"}`);
  const models_ = uniq(workers.map((w) => {
    const repo = first(w, ["model", "repo", "model_repo", "id"]);
    const rev = first(w, ["revision", "model_revision"]);
    return repo ? (rev && !String(repo).includes("@") ? `${repo}@${String(rev).slice(0, 12)}` : repo) : null;
  }));
  set("#st-model", `model: ${models_.join(", ") || "—"}`);
  const digests = uniq(workers.map((w) => first(w, ["manifest_digest", "digest", "manifest.digest", "manifest_sha256"])));
  const verified = workers.length && workers.every((w) => first(w, ["verified", "manifest_verified"]) !== false);
  set("#st-manifest", digests.length
    ? `manifest ${verified ? "verified" : "unverified"}: ${digests.map((d) => String(d).replace(/^sha256:/, "").slice(0, 12)).join(", ")}`
    : "manifest: —");
  let depth = first(ready.data, ["queue_depth", "queue.depth"]);
  if (depth == null && models.ok) depth = first(models.data, ["queue_depth"]);
  if (depth == null && !redisDown) {  // with Redis down the metric says 0, which is not known
    const metrics = await getBody("/metrics", signal);
    if (mine !== generation) return null;
    if (metrics.ok) depth = queueFromMetrics(metrics.raw);
  }
  set("#st-queue", `queue: ${depth == null ? "—" : depth}`);
  const strip = $("#st-ready");
  return `${strip.dataset.state} ${strip.textContent}`;
}

export function initStatus() {
  for (const id of ["#max-length", "#score-max-length"]) {
    $(id).addEventListener("input", (event) => { event.target.dataset.edited = "1"; });
  }
  let timer = null, last = null, wait = STATUS_INTERVAL_MS;
  // The next refresh is set when this one settles (one in flight at a time); a refresh asked for
  // out of turn (a new key) starts at once, and the one it overtakes schedules nothing.
  const tick = (scheduled) => {
    clearTimeout(timer);
    if (scheduled !== true) { last = null; wait = STATUS_INTERVAL_MS; }  // asked for: start afresh
    const mine = generation + 1;  // the one refreshStatus is about to take
    refreshStatus()
      .then((shown) => {
        if (mine !== generation) return;
        const same = shown === last && !shown.startsWith("ok ");
        wait = same ? Math.min(wait * 2, STATUS_BACKOFF_MAX_MS) : STATUS_INTERVAL_MS;
        last = shown;
      })
      .catch(() => {
        if (mine !== generation) return;
        set("#st-ready", "status unavailable", "down");
        last = null; wait = STATUS_INTERVAL_MS;  // a change of what the strip says: ask again soon
      })
      .finally(() => { if (mine === generation) timer = setTimeout(() => tick(true), wait); });
  };
  tick();
  return tick;
}
