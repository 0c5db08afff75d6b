// The Ingest health page, from this agent's own /metrics read every few seconds.
//
// tsagent does not scrape itself by default, so the figures cannot come from PromQL; rates
// are the change of a counter between two reads divided by the time between them.

import { prom, scrapeSelf } from "./api.js";
import { X_VALUES } from "./explore.js";
import { formatTime } from "./time.js";
import { $, clear, el, setStatus } from "./ui.js";

const EVERY_MS = 5000;
const KEEP = 180; // points of history on the rate chart (15 minutes)

let timer = null;
let zone = "UTC";
let previous = null; // {at, samples}
let chart = null;
const history = [[], []];

const number = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

// Reads are seconds apart: ticks on whole seconds (never ":04.250"), coarser as history grows.
const X_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

// A rate's axis starts at zero, so 100/s with jitter reads as a flat line near 100, not as a
// swing between 101 and 103; the top is rounded up to a 1-2-5 step above the highest point.
export function rateRange(max) {
  if (!(max > 0)) return [0, 1];
  const step = 10 ** Math.floor(Math.log10(max));
  const top = [1, 2, 5, 10].map((m) => m * step).find((v) => v >= max * 1.1) ?? 10 * step;
  return [0, top];
}
const bytes = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

function sum(samples, name, where) {
  let total = 0;
  let found = false;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (where && !Object.entries(where).every(([k, v]) => s.labels[k] === v)) continue;
    total += s.value;
    found = true;
  }
  return found ? total : null;
}

function groupBy(samples, name, keys) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = keys.map((k) => s.labels[k] ?? "").join("\u0000");
    out.set(key, (out.get(key) || 0) + s.value);
  }
  return out;
}

function rate(now, before, dt) {
  if (before === null || before === undefined || now === null || dt <= 0) return null;
  return Math.max(0, now - before) / dt; // a reset (restart) reads as 0, not negative
}

function fmtRate(v) {
  return v === null ? "…" : number.format(v);
}

function card(title, value, detail) {
  return el("div", { class: "card", role: "group", "aria-label": title }, [
    el("div", { class: "card-title" }, title),
    el("div", { class: "card-value" }, value),
    el("div", { class: "card-detail" }, detail || ""),
  ]);
}

function drawChart() {
  const host = $("#health-chart");
  if (!chart) {
    chart = new uPlot(
      {
        width: host.clientWidth || 600,
        height: 180,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone),
        scales: {
          x: { time: true },
          y: { range: (u, min, max) => rateRange(max) },
        },
        series: [
          { label: "Time", value: (u, v) => (v == null ? "—" : formatTime(v, zone)) },
          { label: "samples/s", stroke: "#1f77b4", width: 1.5, fill: "rgba(31,119,180,0.1)" },
        ],
        axes: [
          { stroke: "#333", grid: { stroke: "#e6e6e6" }, values: X_VALUES, incrs: X_INCRS },
          {
            stroke: "#333",
            grid: { stroke: "#e6e6e6" },
            size: 60,
            values: (u, vals) => vals.map((v) => compact.format(v)),
          },
        ],
      },
      history,
      host,
    );
    new ResizeObserver(() => chart.setSize({ width: host.clientWidth, height: 180 })).observe(host);
  } else {
    chart.setData(history);
  }
}

function rows(tbody, list, empty, cols) {
  clear(tbody);
  for (const cells of list) {
    tbody.append(el("tr", {}, cells.map((c, i) => el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, c))));
  }
  if (!list.length) tbody.append(el("tr", {}, el("td", { colspan: cols }, empty)));
}

export function healthChart() {
  return chart;
}

async function poll() {
  let samples;
  try {
    samples = await scrapeSelf();
  } catch (err) {
    setStatus(`Could not read /metrics: ${err.message || err}`, true);
    return;
  }
  const at = Date.now() / 1000;
  const dt = previous ? at - previous.at : 0;
  const ingested = groupBy(samples, "tsagent_samples_ingested_total", ["source"]);
  const rejected = groupBy(samples, "tsagent_samples_rejected_total", ["source", "reason"]);
  const delivered = groupBy(samples, "tsagent_export_delivered_samples_total", ["exporter"]);
  const totalIn = [...ingested.values()].reduce((a, b) => a + b, 0);
  const totalRejected = [...rejected.values()].reduce((a, b) => a + b, 0);
  const before = previous || { ingested: new Map(), rejected: new Map(), delivered: new Map() };
  const inRate = previous ? rate(totalIn, previous.totalIn, dt) : null;
  const rejRate = previous ? rate(totalRejected, previous.totalRejected, dt) : null;

  const active = sum(samples, "tsagent_active_series");
  const series = sum(samples, "tsagent_series");
  const headBytes = sum(samples, "tsagent_head_bytes");
  const headSamples = sum(samples, "tsagent_head_samples");
  const pending = groupBy(samples, "tsagent_export_pending_samples", ["exporter"]);
  const backlog = [...pending.values()].reduce((a, b) => a + b, 0);

  const cards = $("#health-cards");
  clear(cards);
  cards.append(
    card("Samples/s", fmtRate(inRate), `${number.format(totalIn)} ingested since start`),
    card("Rejected/s", fmtRate(rejRate), `${number.format(totalRejected)} rejected since start`),
    card("Active series", active === null ? "—" : number.format(active),
      series === null ? "" : `${number.format(series)} series stored`),
    card("Head", headSamples === null ? "—" : `${number.format(headSamples)} samples`,
      headBytes === null ? "" : `${bytes.format(headBytes)}B in memory`),
  );
  if (pending.size) {
    cards.append(card("Forwarder backlog", number.format(backlog), "samples not yet delivered"));
  }

  const sources = new Set([...ingested.keys()]);
  for (const key of rejected.keys()) sources.add(key.split("\u0000")[0]);
  rows($("#health-sources tbody"), [...sources].sort().map((src) => {
    const rej = [...rejected].filter(([k]) => k.split("\u0000")[0] === src)
      .reduce((a, [, v]) => a + v, 0);
    return [src, fmtRate(previous ? rate(ingested.get(src) ?? 0, before.ingested.get(src) ?? 0, dt) : null),
      number.format(ingested.get(src) ?? 0), number.format(rej)];
  }), "Nothing ingested yet.", 4);
  rows($("#health-rejections tbody"), [...rejected].sort().map(([key, v]) => {
    const [src, reason] = key.split("\u0000");
    return [src, reason, fmtRate(previous ? rate(v, before.rejected.get(key) ?? 0, dt) : null),
      number.format(v)];
  }), "No samples rejected.", 4);

  $("#health-forwarder-wrap").hidden = pending.size === 0;
  const dropped = groupBy(samples, "tsagent_export_dropped_samples_total", ["exporter"]);
  const ages = groupBy(samples, "tsagent_export_oldest_pending_age_seconds", ["exporter"]);
  rows($("#health-forwarder tbody"), [...pending].sort().map(([name, n]) => [
    name, number.format(n), `${number.format(ages.get(name) ?? 0)} s`,
    fmtRate(previous ? rate(delivered.get(name) ?? 0, before.delivered.get(name) ?? 0, dt) : null),
    number.format(dropped.get(name) ?? 0),
  ]), "No exporters.", 5);

  if (inRate !== null) {
    history[0].push(at);
    history[1].push(inRate);
    if (history[0].length > KEEP) {
      history[0].shift();
      history[1].shift();
    }
    $("#health-rate-text").textContent = `Now ${fmtRate(inRate)} samples per second.`;
    if (history[0].length >= 2) drawChart(); // one point gives uPlot no time range
  }
  previous = { at, totalIn, totalRejected, ingested, rejected, delivered };
  setStatus("");
}

async function loadTop() {
  try {
    const tsdb = await prom("api/v1/status/tsdb", { limit: 10 });
    rows($("#health-top tbody"), (tsdb.seriesCountByMetricName || []).map((r) => [
      r.name, number.format(r.value)]), "No series yet.", 2);
  } catch (err) {
    setStatus(`Could not read cardinality: ${err.message || err}`, true);
  }
}

export function init(tz) {
  zone = tz;
}

export function setZone(tz) {
  zone = tz;
  if (chart) {
    chart.destroy();
    chart = null;
    clear($("#health-chart"));
    if (history[0].length >= 2) drawChart();
  }
}

export function visible(shown) {
  clearInterval(timer);
  timer = null;
  if (shown) {
    poll();
    loadTop();
    timer = setInterval(() => {
      poll();
    }, EVERY_MS);
  }
}
