// The Alerts page: /api/v1/alerts (pending and firing) and /api/v1/rules (every rule's state).

import { prom } from "./api.js";
import { formatTime } from "./time.js";
import { $, clear, el, setStatus } from "./ui.js";

let timer = null;
let zone = "UTC";

function when(rfc3339) {
  if (!rfc3339 || rfc3339.startsWith("0001-")) return "never";
  const t = Date.parse(rfc3339);
  return Number.isFinite(t) ? formatTime(t / 1000, zone) : rfc3339;
}

function labelText(labels) {
  return Object.entries(labels || {})
    .filter(([k]) => k !== "alertname")
    .map(([k, v]) => `${k}="${v}"`)
    .join(", ");
}

function badge(state) {
  return el("span", { class: `badge ${state}` }, state);
}

export async function refresh() {
  try {
    const [alerts, rules] = await Promise.all([prom("api/v1/alerts"), prom("api/v1/rules")]);
    const body = $("#alerts-table tbody");
    clear(body);
    const list = alerts.alerts || [];
    list.sort((a, b) => (a.state === b.state ? 0 : a.state === "firing" ? -1 : 1));
    for (const a of list) {
      body.append(
        el("tr", {}, [
          el("td", {}, badge(a.state)),
          el("th", { scope: "row" }, a.labels.alertname || ""),
          el("td", { class: "labels" }, labelText(a.labels)),
          el("td", {}, when(a.activeAt)),
          el("td", {}, a.value ?? ""),
        ]),
      );
    }
    if (!list.length) body.append(el("tr", {}, el("td", { colspan: 5 }, "No pending or firing alerts.")));

    const rbody = $("#rules-table tbody");
    clear(rbody);
    let firing = 0;
    let pending = 0;
    let count = 0;
    for (const g of rules.groups || []) {
      for (const r of g.rules || []) {
        count += 1;
        if (r.state === "firing") firing += 1;
        if (r.state === "pending") pending += 1;
        rbody.append(
          el("tr", {}, [
            el("td", {}, g.name),
            el("th", { scope: "row" }, [r.name, el("br"), el("code", {}, r.query)]),
            el("td", {}, r.type),
            el("td", {}, r.type === "alerting" ? badge(r.state) : "—"),
            el("td", {}, badge(r.health)),
            el("td", {}, when(r.lastEvaluation)),
            el("td", { class: "error-text" }, r.lastError || ""),
          ]),
        );
      }
    }
    if (!count) rbody.append(el("tr", {}, el("td", { colspan: 7 }, "No rules are loaded.")));
    $("#alerts-summary").textContent =
      `${firing} firing, ${pending} pending, ${count} rules; updated ${formatTime(Date.now() / 1000, zone)}`;
    setStatus("");
  } catch (err) {
    setStatus(`Could not read alerts: ${err.message || err}`, true);
  }
}

export function init(tz) {
  zone = tz;
  $("#alerts-refresh").addEventListener("click", refresh);
}

export function setZone(tz) {
  zone = tz;
}

export function visible(shown) {
  clearInterval(timer);
  timer = null;
  if (shown) {
    refresh();
    timer = setInterval(refresh, 15000);
  }
}
