// Time zones: everything the page shows (axis, table, legend, alerts) is in one chosen IANA
// zone, the browser's by default, formatted with Intl.DateTimeFormat.

export const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

export function zones() {
  let all = [];
  try {
    all = Intl.supportedValuesOf("timeZone");
  } catch {
    all = [];
  }
  const set = new Set(["UTC", BROWSER_ZONE, ...all]);
  return [...set].sort((a, b) => a.localeCompare(b));
}

const formatters = new Map();

function formatter(tz) {
  if (!formatters.has(tz)) {
    formatters.set(
      tz,
      new Intl.DateTimeFormat("en-GB", {
        timeZone: tz,
        year: "numeric",
        month: "2-digit",
        day: "2-digit",
        hour: "2-digit",
        minute: "2-digit",
        second: "2-digit",
        hourCycle: "h23",
        timeZoneName: "short",
      }),
    );
  }
  return formatters.get(tz);
}

function parts(ms, tz) {
  const out = {};
  for (const p of formatter(tz).formatToParts(new Date(ms))) out[p.type] = p.value;
  return out;
}

// "2024-05-01 13:04:05 CEST" for Unix seconds `ts` in zone `tz`.
export function formatTime(ts, tz, withZone = true) {
  const p = parts(ts * 1000, tz);
  const s = `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
  return withZone ? `${s} ${p.timeZoneName}` : s;
}

// The zone's offset from UTC at instant `ms`, in milliseconds.
function offsetMs(ms, tz) {
  const p = parts(ms, tz);
  const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
  return wall - Math.floor(ms / 1000) * 1000;
}

// A wall-clock "YYYY-MM-DDTHH:MM[:SS]" (a datetime-local value) in `tz` to Unix seconds.
// Two passes settle the offset; in a DST gap the later offset wins, as most tools do.
export function wallToUnix(text, tz) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text || "");
  if (!m) return null;
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  let t = wall - offsetMs(wall, tz);
  t = wall - offsetMs(t, tz);
  return t / 1000;
}

// Unix seconds to a datetime-local value in `tz`.
export function unixToWall(ts, tz) {
  const p = parts(ts * 1000, tz);
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
}

const UNITS = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

export function parseDuration(text) {
  const m = /^(\d+)([smhdw])$/.exec(text || "");
  return m ? +m[1] * UNITS[m[2]] : null;
}

export function formatDuration(seconds) {
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size && seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${Math.max(1, Math.round(seconds))}s`;
}

// A step giving about `points` points over `range` seconds, rounded to a readable duration.
export function niceStep(range, points) {
  const raw = Math.max(1, range / points);
  const nice = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
    43200, 86400];
  return nice.find((s) => s >= raw) || Math.ceil(raw / 86400) * 86400;
}
