// The Score panel: one query against many documents via POST /v1/score, ranked by the hybrid
// score; moving a weight slider re-asks the API with the new weights.
import { ApiError, callUnlessBusy } from "./client.js";
import { $, el, label, lines, numberOf, showError, showProgress } from "./dom.js";
import { anyWeight } from "./vectors.js";

/** Milliseconds the sliders must rest before the API is asked again (one request per drag). */
const RESCORE_DELAY_MS = 150;
const SLIDERS = ["dense", "sparse", "colbert"];

let timer = null;
let sequence = 0; // answers to older requests are dropped, so the last slider position wins
let inFlight = null; // the AbortController of the newest request: a newer one stops its retries
let scored = false;

export function currentWeights() {
  return SLIDERS.map((k) => parseFloat($(`#w-${k}`).value));
}

/** Per-document scores from either a list of objects or FlagEmbedding-style parallel lists. */
function rows(data, count) {
  let list = Array.isArray(data) ? data : null;
  if (!list && data) {
    for (const k of ["scores", "data", "results", "documents"]) if (Array.isArray(data[k])) { list = data[k]; break; }
  }
  if (list) return list.map((r, i) => ({ index: typeof r.index === "number" ? r.index : i, ...r }));
  const col = (k, alt) => (data && (data[k] || data[alt])) || [];
  const dense = col("dense"), sparse = col("sparse"), colbert = col("colbert");
  const hybrid = col("hybrid", "colbert+sparse+dense");
  return Array.from({ length: count }, (_, i) => ({
    index: i, dense: dense[i], sparse: sparse[i], colbert: colbert[i], hybrid: hybrid[i],
  }));
}

const fmt = (v) => (typeof v === "number" ? v.toFixed(4) : "—");

function render(documents, weights, data) {
  const ranked = rows(data, documents.length).sort((a, b) => b.hybrid - a.hybrid);
  const body = ranked.map((r, rank) => el("tr", { "data-doc": String(r.index) },
    el("td", { class: "num", text: String(rank + 1) }),
    el("td", { class: "doc", title: documents[r.index] }, label(documents[r.index] || "", 60)),
    el("td", { class: "num hybrid", text: fmt(r.hybrid) }),
    el("td", { class: "num", text: fmt(r.dense) }),
    el("td", { class: "num", text: fmt(r.sparse) }),
    el("td", { class: "num", text: fmt(r.colbert) })));
  $("#ranking tbody").replaceChildren(...body);
  $("#score-weights").textContent = `weights ${weights.map((w) => w.toFixed(2)).join(" / ")}`;
  const results = $("#score-results");
  results.dataset.weights = weights.join(",");
  results.hidden = false;
}

async function score() {
  const error = $("#score-error"), progress = $("#score-progress");
  const query = $("#query").value.trim();
  const documents = lines($("#documents").value);
  const weights = currentWeights();
  const mine = ++sequence;  // also drops an answer in flight: it is for what was on screen
  if (inFlight) inFlight.abort();  // and stops its retries while the API is busy
  const controller = new AbortController();
  inFlight = controller;
  const refuse = (message) => {
    $("#score-results").hidden = true;  // a ranking for other documents or weights
    showProgress(progress, "");
    showError(error, message);
  };
  if (!query || !documents.length) return refuse("type a query and at least one document, one per line");
  if (!anyWeight(weights)) return refuse("at least one weight must be above zero");
  showError(error, "");
  showProgress(progress, "scoring…");
  try {
    const body = { query, documents, weights, truncate: $("#score-truncate").checked };
    const maxLength = numberOf($("#score-max-length"));
    if (maxLength !== undefined) body.max_length = maxLength;
    const onBusy = (s) => showProgress(progress, `the API is busy; retrying in ${s} s…`);
    const { data } = await callUnlessBusy("POST", "/v1/score", body, controller.signal, onBusy);
    if (mine !== sequence) return;
    render(documents, weights, data);
    scored = true;
  } catch (e) {
    if (mine !== sequence) return;
    $("#score-results").hidden = true;  // a ranking under other weights or documents
    showError(error, e instanceof ApiError ? e.message : `something went wrong in the page: ${e.message}`);
  } finally {
    if (mine === sequence) showProgress(progress, "");
  }
}

function onSlide(kind) {
  $(`#o-${kind}`).textContent = parseFloat($(`#w-${kind}`).value).toFixed(2);
  document.dispatchEvent(new CustomEvent("weights-changed"));
  if (!scored) return;
  clearTimeout(timer);
  timer = setTimeout(score, RESCORE_DELAY_MS);
}

export function initScore() {
  $("#score-form").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); score(); });
  for (const kind of SLIDERS) $(`#w-${kind}`).addEventListener("input", () => onSlide(kind));
}
