// Tiny DOM helpers shared by the console's panels. Text goes in via textContent only, so
// nothing the API or a user typed is ever parsed as HTML.

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k === "title" || k === "role" || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

/** ``link``: a same-origin URL the message points to, appended as a link ("GET <url>"). */
export function showError(node, message, link = "") {
  node.textContent = message || "";
  if (message && link) {
    node.append(" ", el("a", { href: link, target: "_blank", rel: "noopener", text: `GET ${link}` }));
  }
  node.hidden = !message;
}

export function showProgress(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

export function ms(value) {
  if (value == null || Number.isNaN(value)) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(1)} ms`;
}

export function short(text, n = 40) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/** A number field's value as the browser reads it ("1e3" is 1000, where parseInt reads 1), or
 * undefined when it is empty. */
export function numberOf(input) {
  const n = input.valueAsNumber;
  return Number.isFinite(n) ? n : undefined;
}

/** ``text`` cut to ``n`` characters in its own direction (``<bdi>``): an Arabic or Hebrew text
 * ends, and is cut, at its left, where an LTR label put the "…" beside its first word. */
export function label(text, n) {
  return el("bdi", { text: short(text, n) });
}

export function lines(text) {
  return text.split("\n").map((s) => s.replace(/\r$/, "")).filter((s) => s.trim() !== "");
}

/** Left/Right (and Home/End) move between the tabs of a tablist, as the ARIA tabs pattern has
 * it; ``activate`` selects the tab moved to. */
export function arrowKeys(list, activate) {
  list.addEventListener("keydown", (event) => {
    const tabs = [...list.querySelectorAll('[role="tab"]')];
    const at = tabs.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    const tab = tabs[(to + tabs.length) % tabs.length];
    tab.focus();
    activate(tab);
  });
}
