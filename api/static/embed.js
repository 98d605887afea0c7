// The Embed panel: submit a job, then show facts, the N×N similarity heatmaps, sparse chips
// and ColBERT counts, all computed from the vectors the API returned.
import { ApiError, runJob } from "./client.js";
import {
  anyWeight, cosine, epochMs, hybrid, lexical, matrix, maxsim, perText, sparseEntries, vector,
} from "./vectors.js";
import { $, arrowKeys, el, label, lines, ms, numberOf, showError, showProgress } from "./dom.js";
import { currentWeights } from "./score.js";

/** How many top-weighted sparse tokens each text shows as chips. */
const TOP_TOKENS = 8;

/** Texts drawn in the heatmaps, chips and counts; a pasted batch of thousands would otherwise
 * build millions of cells (and MaxSim is quadratic in texts and in tokens). */
const MAX_SHOWN_TEXTS = 40;

const KINDS = {
  dense: { label: "Dense", caption: "cosine similarity of the dense vectors" },
  sparse: { label: "Sparse", caption: "lexical matching score: sum of weight products over shared tokens" },
  colbert: { label: "ColBERT", caption: "MaxSim: row text as query, column text as document" },
  hybrid: { label: "Hybrid", caption: "weighted dense + sparse + ColBERT, weights from the Score tab" },
};

let state = null; // {texts, items, matrices: {kind: number[][] | null}, active}

/** The Hybrid tab's caption when the Score tab's weights are all zero: the matrix is left out
 * rather than shown as zeros under a "weighted" caption, as the Score tab refuses those weights. */
const NO_WEIGHTS = "no hybrid score: every weight on the Score tab is zero; move one above zero";

// The worker's own timings (GET /v1/jobs/<id> "timings"); timestamps are the fallback.
function timing(job, name) {
  const value = job.timings && job.timings[name];
  return typeof value === "number" ? value : null;
}

function latency(job) {
  const created = epochMs(job.created_at), started = epochMs(job.started_at), finished = epochMs(job.finished_at);
  let queue = timing(job, "queue_ms");
  let compute = timing(job, "compute_ms");
  let total = timing(job, "total_ms");
  if (queue == null && created != null && started != null) queue = started - created;
  if (compute == null && started != null && finished != null) compute = finished - started;
  if (total == null && created != null && finished != null) total = finished - created;
  return { queue, compute, total };
}

function grid(n, f) {
  return Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => f(i, j)));
}

function computeMatrices(all) {
  const items = all.slice(0, MAX_SHOWN_TEXTS);
  const n = items.length;
  const out = {};
  const dense = items.map((it) => vector(it.dense));
  const sparse = items.map((it) => sparseEntries(it.sparse));
  const colbert = items.map((it) => matrix(it.colbert));
  if (dense.every(Boolean)) out.dense = grid(n, (i, j) => cosine(dense[i], dense[j]));
  if (sparse.every(Boolean)) out.sparse = grid(n, (i, j) => lexical(sparse[i], sparse[j]));
  if (colbert.every(Boolean)) out.colbert = grid(n, (i, j) => maxsim(colbert[i], colbert[j]));
  return { out, dense, sparse, colbert };
}

/** The matrices with the hybrid one under the Score tab's weights: null (its tab stays, and says
 * why it is empty) when every weight is zero. */
function withHybrid(matrices) {
  if (!(matrices.dense && matrices.sparse && matrices.colbert)) return matrices;
  const w = currentWeights();
  if (!anyWeight(w)) return { ...matrices, hybrid: null };
  const n = matrices.dense.length;
  return {
    ...matrices,
    hybrid: grid(n, (i, j) => hybrid(
      { dense: matrices.dense[i][j], sparse: matrices.sparse[i][j], colbert: matrices.colbert[i][j] }, w)),
  };
}

/** Shade (0 light .. 1 dark) from which a cell's number is white, not black: black on the
 * lighter cells and white on the darker both keep WCAG's 4.5:1 contrast for normal text. */
const WHITE_TEXT_FROM = 0.79;

function colour(t) {
  const light = 97 - 62 * t;
  return `hsl(212, 70%, ${light.toFixed(1)}%)`;
}

function selectTab(kind) {
  for (const b of document.querySelectorAll("#heat-tabs button")) {
    b.setAttribute("aria-selected", String(b.dataset.kind === kind));
    b.tabIndex = b.dataset.kind === kind ? 0 : -1;
  }
  $("#heatmap").dataset.kind = kind;
  state.active = kind;
}

function renderHeatmap(kind) {
  const table = $("#heatmap");
  const values = state.matrices[kind];
  if (!values) {  // only the hybrid's, with every weight at zero
    table.replaceChildren();
    $("#heat-caption").textContent = NO_WEIGHTS;
    selectTab(kind);
    return;
  }
  const n = values.length;
  const flat = values.flat();
  // Scale colours to this matrix's own range, so small differences between texts stay visible.
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const span = hi - lo;
  const head = el("tr", {}, el("th", { class: "corner", text: "" }),
    ...state.texts.slice(0, n).map((t, j) => el("th", { scope: "col", title: t, text: `${j + 1}` })));
  const rows = values.map((row, i) => el("tr", {},
    el("th", { scope: "row", title: state.texts[i] }, `${i + 1}. `, label(state.texts[i], 24)),
    ...row.map((v, j) => {
      const t = span ? (v - lo) / span : 0.5; // one value throughout: a middle shade
      const cell = el("td", {
        class: "cell", "data-row": String(i), "data-col": String(j), "data-value": String(v),
        title: `${state.texts[i]} ↔ ${state.texts[j]}: ${v}`, text: v.toFixed(3),
      });
      cell.style.background = colour(t);
      cell.style.color = t >= WHITE_TEXT_FROM ? "#fff" : "#000";
      return cell;
    })));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  const cut = state.texts.length > n ? `; first ${n} of ${state.texts.length} texts` : "";
  const scale = span ? `colour from ${lo.toFixed(3)} (light) to ${hi.toFixed(3)} (dark)` : `every value ${lo.toFixed(3)}`;
  $("#heat-caption").textContent = `${KINDS[kind].caption}; ${scale}${cut}`;
  selectTab(kind);
}

function renderTabs() {
  const kinds = Object.keys(KINDS).filter((k) => k in state.matrices);
  const tabs = kinds.map((k) => {
    const b = el("button", { type: "button", role: "tab", "data-kind": k, text: KINDS[k].label,
      "aria-controls": "heatmap" });
    b.addEventListener("click", () => renderHeatmap(k));
    return b;
  });
  $("#heat-tabs").replaceChildren(...tabs);
  renderHeatmap(kinds.includes(state.active) ? state.active : kinds[0]);
}

function renderChips(sparse) {
  const card = $("#sparse-card");
  card.hidden = !sparse.every(Boolean);
  if (card.hidden) return;
  const rows = sparse.map((entries, i) => {
    const top = [...entries].sort((a, b) => b.weight - a.weight).slice(0, TOP_TOKENS);
    const chips = top.map((e) => el("span", {
      class: "chip", "data-token": e.id, title: `token id ${e.id}`,
    }, el("span", { class: "tok", text: e.token != null ? e.token : `#${e.id}` }),
    el("b", { text: e.weight.toFixed(3) })));
    return el("div", { class: "chip-row", "data-text": String(i) },
      el("span", { class: "chip-label" }, `${i + 1}. `, label(state.texts[i], 30)),
      ...(chips.length ? chips : [el("span", { class: "caption", text: "no weighted tokens" })]));
  });
  $("#sparse-chips").replaceChildren(...rows);
  $("#sparse-cut").textContent = cutNote(rows.length);
}

/** Says so when a card shows only the first texts of a larger batch ("" otherwise). */
function cutNote(shown) {
  return state.texts.length > shown ? `first ${shown} of ${state.texts.length} texts` : "";
}

function renderColbert(colbert) {
  const card = $("#colbert-card");
  card.hidden = !colbert.every(Boolean);
  if (card.hidden) return;
  const rows = colbert.map((vecs, i) => {
    const perTextTokens = state.items[i].tokens;
    // FlagEmbedding keeps one vector per token after [CLS], so tokens = vectors + 1.
    const tokens = typeof perTextTokens === "number" ? perTextTokens : vecs.length + 1;
    return el("tr", { "data-text": String(i) }, el("td", { text: String(i + 1) }),
      el("td", { title: state.texts[i] }, label(state.texts[i], 40)),
      el("td", { class: "num tokens", text: String(tokens) }),
      el("td", { class: "num vectors", text: String(vecs.length) }));
  });
  $("#colbert-table tbody").replaceChildren(...rows);
  $("#colbert-cut").textContent = cutNote(rows.length);
}

function totalTokens(job) {
  const tokens = job.usage && job.usage.tokens;
  return typeof tokens === "number" ? tokens : null;
}

function renderFacts(job, dense, colbert) {
  const { queue, compute, total } = latency(job);
  // The vectors' own width; a sparse-only job has none (its weights are per vocabulary id).
  const dim = dense.every(Boolean) && dense.length ? dense[0].length
    : colbert.every(Boolean) && colbert.length && colbert[0].length ? colbert[0][0].length : null;
  const tokens = totalTokens(job);
  $("#f-texts").textContent = String(state.texts.length);
  $("#f-dim").textContent = dim == null ? "—" : String(dim);
  $("#f-tokens").textContent = tokens == null ? "—" : String(tokens);
  $("#f-queue").textContent = ms(queue);
  $("#f-compute").textContent = ms(compute);
  $("#f-total").textContent = ms(total);
}

/** Recompute the hybrid heatmap after the weights move. */
export function refreshHybrid() {
  if (!state || !state.matrices.dense) return;
  state.matrices = withHybrid(state.matrices);
  if (state.active === "hybrid") renderHeatmap("hybrid");
}

async function submit(event) {
  event.preventDefault();
  const error = $("#embed-error"), progress = $("#embed-progress"), button = $("#run-embed");
  showError(error, "");
  const texts = lines($("#texts").value);
  if (!texts.length) { showError(error, "type at least one text, one per line"); return; }
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const modes = mode === "all" ? ["dense", "sparse", "colbert"] : [mode];
  // The default encoding: dense as numbers, ColBERT as base64 float16 (a sixth of float JSON).
  const body = { texts, modes, truncate: $("#truncate").checked };
  const maxLength = numberOf($("#max-length"));
  if (maxLength !== undefined) body.max_length = maxLength;
  button.disabled = true;
  $("#embed-results").hidden = true;  // the last run's results are not this run's
  const controller = new AbortController();
  const cancel = $("#cancel-embed");
  const onCancel = () => controller.abort();
  cancel.addEventListener("click", onCancel);
  cancel.hidden = false;
  // The focused Run button is disabled now: focus would fall to the page's top, far from Cancel.
  const keyboard = document.activeElement === button;
  if (keyboard) cancel.focus();
  try {
    const job = await runJob(body, (s, note) => showProgress(progress, `job ${s}…${note ? ` ${note}` : ""}`),
      controller.signal);
    const items = perText(job.result);
    if (items.length !== texts.length) throw new ApiError(`the API returned ${items.length} results for ${texts.length} texts`);
    const { out, dense, sparse, colbert } = computeMatrices(items);
    state = { texts, items, matrices: withHybrid(out), active: mode === "all" ? "dense" : mode };
    renderFacts(job, dense, colbert);
    renderTabs();
    renderChips(sparse);
    renderColbert(colbert);
    $("#embed-results").hidden = false;
    $("#embed-results").dataset.job = job.id;
  } catch (e) {
    showError(error, e instanceof ApiError ? e.message : `something went wrong in the page: ${e.message}`,
      e instanceof ApiError ? e.link : "");
  } finally {
    showProgress(progress, "");
    cancel.removeEventListener("click", onCancel);
    const hadFocus = document.activeElement === cancel;
    cancel.hidden = true;
    button.disabled = false;
    if (keyboard || hadFocus) button.focus();
  }
}

export function initEmbed() {
  $("#embed-form").addEventListener("submit", submit);
  arrowKeys($("#heat-tabs"), (tab) => renderHeatmap(tab.dataset.kind));
}
