// The Explore page: metric picker, label filters, range, resolution, PromQL box, chart, table.

import { feature, prom, sse } from "./api.js";
import { formatDuration, formatTime, niceStep, parseDuration, unixToWall, wallToUnix }
  from "./time.js";
import { $, clear, el, setStatus } from "./ui.js";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22"];
const MAX_SERIES = 20;
const MAX_TABLE_ROWS = 500;
const ROLLUP_PATH = "query/rollup";
const ANOMALY_PATH = "anomaly/detect";
const STREAM_PATH = "api/v1/stream";

const state = {
  tz: "UTC",
  metric: "",
  filters: {}, // label -> value chosen in the filter selects
  range: "1h",
  from: "",
  to: "",
  resolution: "auto",
  expr: "",
  generated: "", // the selector the page built; the PromQL box may hold something else
  live: false,
  anomaly: false,
  threshold: 3,
  method: "zscore",
};

const has = { rollup: false, anomaly: false, stream: false };
let names = [];
let chart = null;
let chartKey = "";
let lastResult = null; // {series: [{name, labels, points}], window, note, overlay}
let zoomed = false;
let stopLive = null;
let refreshTimer = null;
let lastRun = 0;
let runSeq = 0;

// uPlot's x-axis formats (tick size, label, then the longer label when the year, month or day
// changes), in 24-hour ISO-like style to match the table.
export const X_VALUES = [
  [86400 * 365, "{YYYY}", null, null, null, null, null, null, 1],
  [86400 * 28, "{MMM}", "\n{YYYY}", null, null, null, null, null, 1],
  [86400, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
  [3600, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [60, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [1, "{HH}:{mm}:{ss}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [0.001, ":{ss}.{fff}", "\n{YYYY}-{MM}-{DD} {HH}:{mm}", null, "\n{MM}-{DD} {HH}:{mm}", null,
    "\n{HH}:{mm}", null, 1],
];

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 3 });
const precise = new Intl.NumberFormat("en", { maximumSignificantDigits: 10 });

function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (!Number.isFinite(v)) return String(v);
  return precise.format(v);
}

// --- the selector --------------------------------------------------------------------------

function quote(v) {
  return `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;
}

function selector() {
  if (!state.metric) return "";
  const parts = Object.entries(state.filters)
    .filter(([, v]) => v !== "")
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${quote(v)}`);
  return parts.length ? `${state.metric}{${parts.join(",")}}` : state.metric;
}

function usesGenerated() {
  return state.generated !== "" && state.expr.trim() === state.generated;
}

function seriesLabel(labels, sameName) {
  const pairs = Object.entries(labels).filter(([k]) => !(sameName && k === "__name__"));
  const inner = pairs.filter(([k]) => k !== "__name__").map(([k, v]) => `${k}=${quote(v)}`);
  const name = labels.__name__ && !sameName ? labels.__name__ : "";
  if (!inner.length) return name || labels.__name__ || "{}";
  return `${name}{${inner.join(", ")}}`;
}

// --- time window -----------------------------------------------------------------------------

function timeWindow() {
  if (state.range === "custom") {
    const start = wallToUnix(state.from, state.tz);
    const end = wallToUnix(state.to, state.tz);
    if (start === null || end === null || end <= start) {
      throw new Error("custom range: choose a start before the end");
    }
    return { start, end };
  }
  const end = Math.floor(Date.now() / 1000);
  return { start: end - parseDuration(state.range), end };
}

// --- queries ----------------------------------------------------------------------------------

function matrix(data) {
  const result = data.resultType === "matrix" ? data.result : data.result || [];
  return result.map((r) => ({
    labels: r.metric || {},
    points: (r.values || (r.value ? [r.value] : [])).map(([t, v]) => [Number(t), Number(v)]),
  }));
}

async function rangeQuery(expr, win, step) {
  const data = await prom("api/v1/query_range", {
    query: expr, start: win.start, end: win.end, step: `${step}s`,
  });
  return matrix(data);
}

async function rawQuery(win) {
  // A range selector at `end` returns every stored sample in (end - range, end].
  const range = Math.max(1, Math.ceil(win.end - win.start));
  const data = await prom("api/v1/query", { query: `${state.generated}[${range}s]`, time: win.end });
  return matrix(data);
}

// /query/rollup: per series, windows [t, t + window) with min/max/avg/sum/count/last, read
// from the coarsest rollup that divides the window (raw samples where none is built yet).
async function rollupQuery(win, window) {
  const data = await prom(ROLLUP_PATH, {
    metric_name: state.metric,
    "match[]": state.generated,
    start_time: win.start,
    end_time: win.end,
    window,
  });
  const series = (data.series || []).map((s) => ({
    labels: s.labels,
    points: s.buckets.map((b) => [Number(b.timestamp), Number(b.avg)]),
  }));
  return { series, source: data.source || "rollup" };
}

async function fetchSeries(win) {
  const width = $("#chart").clientWidth || 800;
  const window = parseDuration(state.resolution);
  if (state.resolution === "raw") {
    if (usesGenerated()) return { series: await rawQuery(win), note: "every stored sample" };
    const step = niceStep(win.end - win.start, width / 2);
    return {
      series: await rangeQuery(state.expr, win, step),
      step,
      note: `raw samples need a plain selector; step ${formatDuration(step)}`,
    };
  }
  if (window) {
    let fallback = "";
    if (has.rollup && usesGenerated()) {
      try {
        const { series, source } = await rollupQuery(win, state.resolution);
        if (series.length) {
          return {
            series,
            step: window,
            note: `${state.resolution} averages from /query/rollup (${source})`,
          };
        }
        fallback = "; /query/rollup had no series";
      } catch (err) {
        fallback = `; /query/rollup failed (${err.message || err})`;
      }
    }
    const expr = usesGenerated() ? `avg_over_time(${state.generated}[${state.resolution}])`
      : state.expr;
    return {
      series: await rangeQuery(expr, win, window),
      step: window,
      note: usesGenerated() ? `${state.resolution} averages (PromQL avg_over_time)${fallback}`
        : `step ${state.resolution}`,
    };
  }
  const step = niceStep(win.end - win.start, width / 2);
  return {
    series: await rangeQuery(state.expr, win, step),
    step,
    note: `step ${formatDuration(step)}`,
  };
}

// /anomaly/detect (plugin analytics): per series, scored points with an expected band.
async function fetchAnomalies(win) {
  const data = await prom(ANOMALY_PATH, {
    metric_name: state.metric,
    "match[]": state.generated,
    start_time: win.start,
    end_time: win.end,
    threshold: state.threshold,
    method: state.method,
  });
  return anomalyPoints(data);
}

// Flagged points of every series; the expected band only when there is one series (several
// bands on one chart are unreadable).
export function anomalyPoints(data) {
  const list = data.series || [];
  const out = { band: [], flagged: [] };
  for (const s of list) {
    for (const p of s.points || []) {
      if (list.length === 1 && p.lower !== null && p.upper !== null) {
        out.band.push([p.timestamp, p.lower, p.upper]);
      }
      if (p.is_anomaly && p.value !== null) out.flagged.push([p.timestamp, p.value]);
    }
  }
  return out;
}

// --- chart -------------------------------------------------------------------------------------

// A missing step is a gap (null breaks the line); times that only other series (or the
// overlay) have stay undefined, which uPlot draws across.
function withGaps(points, step) {
  if (!step) return points;
  const out = [];
  for (let i = 0; i < points.length; i++) {
    if (i && points[i][0] - points[i - 1][0] > step * 1.5) out.push([points[i - 1][0] + step, null]);
    out.push(points[i]);
  }
  return out;
}

function align(result) {
  const { window: win, overlay } = result;
  const series = result.series.map((s) => withGaps(s.points, result.step));
  const times = new Set([win.start, win.end]); // pins the x axis to the whole window
  for (const s of series) for (const [t] of s) times.add(t);
  if (overlay) {
    for (const [t] of overlay.band) times.add(t);
    for (const [t] of overlay.flagged) times.add(t);
  }
  const xs = [...times].sort((a, b) => a - b);
  const index = new Map(xs.map((t, i) => [t, i]));
  const columns = series.map((s) => {
    const col = new Array(xs.length).fill(undefined);
    for (const [t, v] of s) col[index.get(t)] = Number.isFinite(v) ? v : null;
    return col;
  });
  if (overlay) {
    const lo = new Array(xs.length).fill(undefined);
    const hi = new Array(xs.length).fill(undefined);
    const fl = new Array(xs.length).fill(undefined);
    for (const [t, l, h] of overlay.band) {
      lo[index.get(t)] = l;
      hi[index.get(t)] = h;
    }
    for (const [t, v] of overlay.flagged) fl[index.get(t)] = v;
    columns.push(hi, lo, fl);
  }
  return [xs, ...columns];
}

function chartOptions(series, overlay, width) {
  const sameName = new Set(series.map((s) => s.labels.__name__)).size <= 1;
  const tz = state.tz;
  const manyPoints = series.reduce((n, s) => n + s.points.length, 0) > 2000;
  const opts = {
    width,
    height: Math.max(220, Math.min(380, Math.round(width * 0.45))),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
    scales: { x: { time: true } },
    cursor: { drag: { x: true, y: false, setScale: true }, focus: { prox: 24 } },
    legend: { live: true },
    series: [
      { label: "Time", value: (u, v) => (v === null || v === undefined ? "—" : formatTime(v, tz)) },
      ...series.map((s, i) => ({
        label: seriesLabel(s.labels, sameName),
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        value: (u, v) => fmtValue(v),
        points: { show: manyPoints ? false : undefined },
      })),
    ],
    axes: [
      { stroke: "#333", grid: { stroke: "#e6e6e6" }, ticks: { stroke: "#ccc" }, values: X_VALUES },
      {
        stroke: "#333",
        grid: { stroke: "#e6e6e6" },
        ticks: { stroke: "#ccc" },
        size: 64,
        values: (u, vals) => vals.map((v) => compact.format(v)),
      },
    ],
    hooks: {
      setSelect: [() => { zoomed = true; }],
    },
  };
  if (overlay) {
    const n = series.length;
    opts.series.push(
      { label: "expected (upper)", stroke: "rgba(214,39,40,0.25)", width: 1, value: (u, v) => fmtValue(v) },
      { label: "expected (lower)", stroke: "rgba(214,39,40,0.25)", width: 1, value: (u, v) => fmtValue(v) },
      {
        label: "anomaly",
        stroke: "#d62728",
        width: 0,
        paths: () => null,
        points: { show: true, size: 9, fill: "#d62728", stroke: "#7a0000" },
        value: (u, v) => fmtValue(v),
      },
    );
    opts.bands = [{ series: [n + 1, n + 2], fill: "rgba(214,39,40,0.08)" }];
  }
  return opts;
}

function draw(result) {
  const host = $("#chart");
  host.hidden = false; // measured below: a hidden element has no width
  const data = align(result);
  const key = JSON.stringify([state.tz, result.series.map((s) => s.labels), !!result.overlay]);
  const width = host.clientWidth || 800;
  if (chart && key === chartKey) {
    chart.setData(data, !zoomed);
  } else {
    if (chart) chart.destroy();
    clear(host);
    zoomed = false;
    chart = new uPlot(chartOptions(result.series, result.overlay, width), data, host);
    chartKey = key;
  }
  const points = result.series.reduce((n, s) => n + s.points.length, 0);
  host.setAttribute(
    "aria-label",
    `Line chart of ${result.series.length} series, ${points} points, from ` +
      `${formatTime(result.window.start, state.tz)} to ${formatTime(result.window.end, state.tz)}. ` +
      "The table below lists the values.",
  );
  host.dataset.points = String(points);
}

function renderTable(result) {
  const table = $("#data-table");
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  clear(head);
  clear(body);
  const series = result.series;
  const sameName = new Set(series.map((s) => s.labels.__name__)).size <= 1;
  head.append(
    el("tr", {}, [
      el("th", { scope: "col" }, `Time (${state.tz})`),
      ...series.map((s) => el("th", { scope: "col" }, seriesLabel(s.labels, sameName))),
    ]),
  );
  const times = new Set();
  const byTime = series.map((s) => new Map(s.points));
  for (const s of series) for (const [t] of s.points) times.add(t);
  const rows = [...times].sort((a, b) => b - a);
  for (const t of rows.slice(0, MAX_TABLE_ROWS)) {
    body.append(
      el("tr", {}, [
        el("th", { scope: "row" }, formatTime(t, state.tz)),
        ...byTime.map((m) => el("td", {}, fmtValue(m.has(t) ? m.get(t) : null))),
      ]),
    );
  }
  table.querySelector("caption").textContent = rows.length > MAX_TABLE_ROWS
    ? `Values (newest ${MAX_TABLE_ROWS} of ${rows.length} times)`
    : `Values (${rows.length} times, newest first)`;
}

// --- running ----------------------------------------------------------------------------------

// The hint shown in place of the chart: what to do first, or why nothing is drawn.
function showEmpty(text) {
  const hint = $("#chart-empty");
  if (text) hint.textContent = text;
  hint.hidden = !text;
  $("#chart").hidden = !chart || Boolean(text); // the hint replaces an empty frame
}

export async function run() {
  writeHash();
  if (!state.expr.trim()) return;
  const seq = ++runSeq;
  lastRun = Date.now();
  setStatus("Loading…");
  try {
    const win = timeWindow();
    const { series: all, note, step } = await fetchSeries(win);
    let overlay = null;
    if (state.anomaly && has.anomaly && usesGenerated()) {
      try {
        overlay = await fetchAnomalies(win);
      } catch (err) {
        setStatus(String(err.message || err));
      }
    }
    if (seq !== runSeq) return; // a newer run started meanwhile
    const series = all.slice(0, MAX_SERIES);
    const more = all.length > MAX_SERIES ? `; showing ${MAX_SERIES} of ${all.length} series` : "";
    lastResult = { series, window: win, note, overlay, step };
    draw(lastResult);
    renderTable(lastResult);
    let anomalies = overlay ? `; ${overlay.flagged.length} anomalies (${state.method})` : "";
    if (state.anomaly && has.anomaly && !usesGenerated()) {
      anomalies = "; anomaly detection needs a metric picked above, not a PromQL expression";
    }
    $("#chart-note").textContent = `${note}${more}${anomalies}`;
    // Said where the chart is, not in the status line at the top of the page.
    showEmpty(series.length ? "" : "No data in this range. Try a longer range, another"
      + " resolution or other label filters.");
    setStatus("");
  } catch (err) {
    if (seq === runSeq) setStatus(`Query failed: ${err.message || err}`, true);
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  const win = lastResult ? lastResult.window : { start: 0, end: 3600 };
  const every = Math.max(2000, niceStep(win.end - win.start, 720) * 1000);
  const wait = Math.max(0, lastRun + every - Date.now());
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    run();
  }, wait);
}

function updateLive() {
  delete $("#chart").dataset.live;
  if (stopLive) {
    stopLive();
    stopLive = null;
  }
  const on = state.live && has.stream && state.range !== "custom" && state.expr.trim() !== "";
  $("#live").checked = state.live && state.range !== "custom";
  $("#live").disabled = state.range === "custom";
  if (!on) return;
  // Samples committed for the selector (or any series the expression reads) trigger a
  // re-query, throttled to one step, so every resolution stays correct while it moves.
  const onEvent = (event) => {
    if (event === "subscribed") $("#chart").dataset.live = "subscribed"; // tests wait for it
    if (event === "samples" || event === "result") scheduleRefresh();
  };
  const onEnd = (err) => {
    if (err) setStatus(`Live updates stopped: ${err.message || err}`, true);
  };
  stopLive = usesGenerated()
    ? sse(STREAM_PATH, { "match[]": state.generated }, onEvent, onEnd)
    : sse(`${STREAM_PATH}/query`, { query: state.expr }, onEvent, onEnd);
}

// --- metric names and label filters ------------------------------------------------------------

function renderNames() {
  const box = $("#metric");
  const needle = $("#metric-search").value.trim().toLowerCase();
  const shown = names.filter((n) => n.toLowerCase().includes(needle));
  clear(box);
  for (const n of shown.slice(0, 1000)) {
    box.append(el("option", { value: n, selected: n === state.metric }, n));
  }
  $("#metric-count").textContent = `${shown.length} of ${names.length} metrics`;
}

async function loadNames() {
  try {
    names = await prom("api/v1/label/__name__/values");
    renderNames();
  } catch (err) {
    setStatus(`Could not list metrics: ${err.message || err}`, true);
  }
}

async function loadFilters() {
  const box = $("#filter-list");
  clear(box);
  $("#filters").hidden = true;
  if (!state.metric) return;
  let sets = [];
  try {
    const win = timeWindow();
    sets = await prom("api/v1/series", {
      "match[]": state.metric, start: win.start, end: win.end, limit: 5000,
    });
  } catch (err) {
    setStatus(`Could not list series: ${err.message || err}`, true);
    return;
  }
  const values = new Map();
  for (const labels of sets) {
    for (const [k, v] of Object.entries(labels)) {
      if (k === "__name__") continue;
      if (!values.has(k)) values.set(k, new Set());
      values.get(k).add(v);
    }
  }
  for (const [label, vals] of [...values].sort(([a], [b]) => a.localeCompare(b))) {
    if (vals.size < 2 && !state.filters[label]) continue;
    const id = `filter-${label}`;
    const select = el("select", { id, "data-label": label }, [
      el("option", { value: "" }, "(any)"),
      ...[...vals].sort().map((v) => el("option", { value: v, selected: state.filters[label] === v }, v)),
    ]);
    select.addEventListener("change", () => {
      state.filters[label] = select.value;
      useSelector();
    });
    box.append(el("label", { for: id }, label), select);
  }
  $("#filters").hidden = box.childElementCount === 0;
}

function useSelector() {
  state.generated = selector();
  state.expr = state.generated;
  $("#promql").value = state.expr;
  run().then(updateLive);
}

async function chooseMetric(name) {
  if (!name || name === state.metric) return;
  state.metric = name;
  state.filters = {};
  useSelector();
  await loadFilters();
}

// --- zoom and keyboard -------------------------------------------------------------------------

function zoom(factor, shift = 0) {
  if (!chart) return;
  const { min, max } = chart.scales.x;
  const mid = (min + max) / 2 + shift * (max - min);
  const half = ((max - min) / 2) * factor;
  zoomed = true;
  chart.setScale("x", { min: mid - half, max: mid + half });
}

function resetZoom() {
  if (!chart || !lastResult) return;
  zoomed = false;
  chart.setScale("x", { min: lastResult.window.start, max: lastResult.window.end });
}

function chartKeys(ev) {
  if (!chart) return;
  const xs = chart.data[0];
  let idx = chart.cursor.idx;
  const step = { ArrowLeft: -1, ArrowRight: 1, PageUp: -10, PageDown: 10 }[ev.key];
  if (ev.key === "Home") idx = 0;
  else if (ev.key === "End") idx = xs.length - 1;
  else if (step) idx = Math.min(xs.length - 1, Math.max(0, (idx ?? xs.length - 1) + step));
  else if (ev.key === "+" || ev.key === "=") return zoom(0.5);
  else if (ev.key === "-") return zoom(2);
  else if (ev.key === "0") return resetZoom();
  else return;
  ev.preventDefault();
  const y = chart.data.slice(1).map((col) => col[idx]).find((v) => v !== null && v !== undefined);
  chart.setCursor({
    left: chart.valToPos(xs[idx], "x"),
    top: y === undefined ? 10 : chart.valToPos(y, "y"),
  });
}

// --- URL state ---------------------------------------------------------------------------------

function writeHash() {
  const p = new URLSearchParams();
  if (state.expr) p.set("expr", state.expr);
  if (state.metric) p.set("metric", state.metric);
  for (const [k, v] of Object.entries(state.filters)) if (v) p.set(`l.${k}`, v);
  p.set("range", state.range);
  if (state.range === "custom") {
    p.set("from", state.from);
    p.set("to", state.to);
  }
  p.set("res", state.resolution);
  if (location.hash.startsWith("#/explore") || location.hash === "" || location.hash === "#") {
    history.replaceState(null, "", `#/explore?${p}`);
  }
}

function readHash() {
  const q = location.hash.split("?")[1];
  if (!q) return;
  const p = new URLSearchParams(q);
  state.metric = p.get("metric") || "";
  state.filters = {};
  for (const [k, v] of p) if (k.startsWith("l.")) state.filters[k.slice(2)] = v;
  state.range = p.get("range") || state.range;
  state.from = p.get("from") || "";
  state.to = p.get("to") || "";
  state.resolution = p.get("res") || state.resolution;
  state.generated = selector();
  state.expr = p.get("expr") || state.generated;
}

// --- wiring ------------------------------------------------------------------------------------

export function setZone(tz) {
  state.tz = tz;
  if (state.range === "custom" && lastResult) {
    state.from = unixToWall(lastResult.window.start, tz);
    state.to = unixToWall(lastResult.window.end, tz);
    $("#from").value = state.from;
    $("#to").value = state.to;
  }
  if (lastResult) {
    chartKey = ""; // axis labels are formatted at creation: rebuild in the new zone
    draw(lastResult);
    renderTable(lastResult);
  }
}

export function chartHandle() {
  return chart;
}

export async function init(tz) {
  state.tz = tz;
  readHash();
  $("#range").value = state.range;
  $("#resolution").value = state.resolution;
  $("#promql").value = state.expr;
  $("#custom-range").hidden = state.range !== "custom";
  $("#from").value = state.from;
  $("#to").value = state.to;

  $("#metric-search").addEventListener("input", renderNames);
  $("#metric-search").addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown") {
      ev.preventDefault();
      $("#metric").focus();
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      const typed = $("#metric-search").value.trim();
      const first = names.includes(typed) ? typed : $("#metric").options[0]?.value;
      if (first) chooseMetric(first);
    }
  });
  $("#metric").addEventListener("change", () => chooseMetric($("#metric").value));
  $("#range").addEventListener("change", () => {
    const win = lastResult ? lastResult.window : timeWindow();
    state.range = $("#range").value;
    $("#custom-range").hidden = state.range !== "custom";
    if (state.range === "custom") {
      state.from = state.from || unixToWall(win.start, state.tz);
      state.to = state.to || unixToWall(win.end, state.tz);
      $("#from").value = state.from;
      $("#to").value = state.to;
    }
    run().then(updateLive);
  });
  for (const id of ["#from", "#to"]) {
    $(id).addEventListener("change", () => {
      state.from = $("#from").value;
      state.to = $("#to").value;
      run();
    });
  }
  $("#resolution").addEventListener("change", () => {
    state.resolution = $("#resolution").value;
    run();
  });
  $("#live").addEventListener("change", () => {
    state.live = $("#live").checked;
    updateLive();
  });
  $("#anomaly").addEventListener("change", () => {
    state.anomaly = $("#anomaly").checked;
    run();
  });
  $("#anomaly-method").addEventListener("change", () => {
    state.method = $("#anomaly-method").value;
    if (state.anomaly) run();
  });
  $("#threshold").addEventListener("change", () => {
    state.threshold = Number($("#threshold").value) || 3;
    if (state.anomaly) run();
  });
  $("#promql-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.expr = $("#promql").value;
    run().then(updateLive);
  });
  $("#promql").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      $("#promql-form").requestSubmit();
    }
  });
  $("#zoom-in").addEventListener("click", () => zoom(0.5));
  $("#zoom-out").addEventListener("click", () => zoom(2));
  $("#pan-left").addEventListener("click", () => zoom(1, -0.25));
  $("#pan-right").addEventListener("click", () => zoom(1, 0.25));
  $("#zoom-reset").addEventListener("click", resetZoom);
  $("#chart").addEventListener("keydown", chartKeys);
  $("#chart").addEventListener("dblclick", () => { zoomed = false; });
  new ResizeObserver(() => {
    if (chart) chart.setSize({ width: $("#chart").clientWidth, height: chart.height });
  }).observe($("#chart"));

  const [rollup, anomaly, stream] = await Promise.all([
    feature(ROLLUP_PATH), feature(ANOMALY_PATH), feature(STREAM_PATH),
  ]);
  Object.assign(has, { rollup, anomaly, stream });
  $("#anomaly-wrap").hidden = !anomaly;
  $("#live-wrap").hidden = !stream;

  await loadNames();
  if (state.metric) loadFilters();
  if (state.expr) run().then(updateLive);
}

export function visible(shown) {
  if (!shown && stopLive) {
    stopLive();
    stopLive = null;
  } else if (shown) {
    updateLive();
  }
}

export { state as exploreState };
