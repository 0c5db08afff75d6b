// Entry point: page routing by URL hash, the shared time-zone choice, sign-in on 401.

import * as alerts from "./alerts.js";
import { onUnauthorized, setAuthorization } from "./api.js";
import * as explore from "./explore.js";
import * as health from "./health.js";
import { BROWSER_ZONE, zones } from "./time.js";
import { $, el } from "./ui.js";

const PAGES = { explore, alerts, health };
const ZONE_KEY = "tsagent.tz";
let current = null;

function route() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const page = PAGES[name] ? name : "explore";
  if (page === current) return;
  if (current) PAGES[current].visible(false);
  for (const key of Object.keys(PAGES)) $(`#page-${key}`).hidden = key !== page;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const previous = current;
  current = page;
  PAGES[page].visible(true);
  if (previous) $("#main").focus(); // keyboard and screen-reader users land on the new page
}

function zoneSelect() {
  const select = $("#tz");
  const stored = localStorage.getItem(ZONE_KEY);
  const chosen = stored && zones().includes(stored) ? stored : BROWSER_ZONE;
  select.append(el("option", { value: BROWSER_ZONE }, `Browser (${BROWSER_ZONE})`));
  for (const z of zones()) select.append(el("option", { value: z }, z));
  select.value = chosen;
  select.addEventListener("change", () => {
    const tz = select.value;
    localStorage.setItem(ZONE_KEY, tz);
    for (const page of Object.values(PAGES)) page.setZone(tz);
  });
  return chosen;
}

// One sign-in dialog at a time; every request waiting on a 401 retries once it closes.
let signingIn = null;

function askCredentials() {
  if (signingIn) return signingIn;
  const dialog = $("#login");
  signingIn = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (dialog.returnValue === "ok") {
          const token = $("#login-token").value.trim();
          const user = $("#login-user").value;
          const password = $("#login-password").value;
          if (token) setAuthorization(`Bearer ${token}`);
          else if (user) {
            const raw = new TextEncoder().encode(`${user}:${password}`);
            setAuthorization(`Basic ${btoa(String.fromCharCode(...raw))}`);
          }
        }
        $("#login-password").value = "";
        $("#login-token").value = "";
        signingIn = null;
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
  return signingIn;
}

async function main() {
  onUnauthorized(askCredentials);
  const tz = zoneSelect();
  for (const page of Object.values(PAGES)) page.init(tz);
  window.addEventListener("hashchange", route);
  route();
}

// For tests and the curious: the chart and state behind the Explore page.
window.tsagentDashboard = {
  chart: explore.chartHandle,
  state: explore.exploreState,
  healthChart: health.healthChart,
};

main();
