// Decoding of job results (base64 float32/float16, sparse weights) and the scoring maths, with
// the same definitions as FlagEmbedding's compute_score. No DOM, no HTTP here.

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

/** Whether the weights make a hybrid score: with all at zero there is none (the API refuses them). */
export function anyWeight(weights) {
  return weights.some((w) => w > 0);
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
