// Console entry point: tabs, the API key field, and the three panels.
import { apiKey, setApiKey } from "./client.js";
import { $ } from "./dom.js";
import { initEmbed, refreshHybrid } from "./embed.js";
import { initScore } from "./score.js";
import { initStatus } from "./status.js";

function initTabs() {
  const tabs = [...document.querySelectorAll("nav.tabs:not(.small) > button")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      for (const t of tabs) {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on));
        $(`#${t.dataset.panel}`).hidden = !on;
      }
    });
  }
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
