// Console entry point: tabs, the API key field, and the three panels.
import { apiKey, setApiKey } from "./client.js";
import { $, arrowKeys, showError } from "./dom.js";
import { initEmbed, refreshHybrid } from "./embed.js";
import { initScore } from "./score.js";
import { initStatus } from "./status.js";

function initTabs() {
  const list = document.querySelector("nav.tabs:not(.small)");
  const tabs = [...list.querySelectorAll("button")];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;  // one tab stop for the list; the arrows move inside it
      $(`#${t.dataset.panel}`).hidden = !on;
    }
  };
  for (const tab of tabs) tab.addEventListener("click", () => select(tab));
  arrowKeys(list, select);
}

/** Said when a key has a character no HTTP header can carry: fetch() would refuse every call,
 * which would read as "the API is down". */
const BAD_KEY = "this API key is invalid: it has a space or a character outside printable ASCII "
  + "(often an invisible one pasted with it); it was not kept, so no key is sent. Type it again.";

/** Milliseconds after the last keystroke in the key field before the key is taken (the status
 * strip then says at once whether the API takes it); leaving the field or Enter takes it now. */
export const KEY_SETTLE_MS = 500;

function initKey(refresh) {
  const field = $("#api-key");
  field.value = apiKey();
  let timer = null, taken = field.value.trim();
  const take = () => {
    clearTimeout(timer);
    const value = field.value.trim();
    if (value === taken) return;  // a blur after the keystrokes were taken asks nothing again
    taken = value;
    const kept = setApiKey(value);
    field.setAttribute("aria-invalid", String(!kept));
    showError($("#key-error"), kept ? "" : BAD_KEY);
    refresh();
  };
  field.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(take, KEY_SETTLE_MS); });
  field.addEventListener("change", take);
}

initTabs();
initEmbed();
initScore();
document.addEventListener("weights-changed", refreshHybrid);
initKey(initStatus());
