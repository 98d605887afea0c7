// Console entry point: tabs, the API key field, and the three panels.
import { apiKey, setApiKey } from "./client.js";
import { $, arrowKeys } from "./dom.js";
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

function initKey(refresh) {
  const field = $("#api-key");
  field.value = apiKey();
  field.addEventListener("change", () => { setApiKey(field.value.trim()); refresh(); });
}

initTabs();
initEmbed();
initScore();
document.addEventListener("weights-changed", refreshHybrid);
initKey(initStatus());
