// Small helpers shared by the views: element creation, avatars, times.

/** Creates an element: h("div", {class: "x", text: "hi"}, child, ...). Text is never parsed as HTML. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An icon from the sprite in index.html. */
export function icon(name, cls) {
  const svg = document.createElementNS(SVG_NS, "svg");
  if (cls) svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(SVG_NS, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

const AVATAR_COLORS = [
  "#2c6bed", "#7b4ce0", "#c8398a", "#d9513b", "#c47a0a",
  "#2f9d57", "#138a8a", "#3f7fb8", "#8a5a3c", "#5b6b84",
];

/** A stable colour per name. */
export function avatarColor(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return AVATAR_COLORS[hash % AVATAR_COLORS.length];
}

/** Fills an avatar element for `name` (first letter, colour). */
export function paintAvatar(el, name, online) {
  el.textContent = (Array.from(name)[0] || "?").toUpperCase();
  el.style.setProperty("--avatar", avatarColor(name));
  if (online) el.append(h("span", { class: "presence", title: "Online" }));
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const weekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const dateFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const longDayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const DAY_MS = 86400000;

function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** "14:05" */
export function formatTime(ms) {
  return timeFmt.format(new Date(ms));
}

/** For the peer list: time today, weekday this week, date before. */
export function formatShort(ms) {
  const today = startOfDay(Date.now());
  if (ms >= today) return timeFmt.format(new Date(ms));
  if (ms >= today - 6 * DAY_MS) return weekdayFmt.format(new Date(ms));
  return dateFmt.format(new Date(ms));
}

/** Day key, to group messages. */
export function dayKey(ms) {
  return startOfDay(ms);
}

/** "Today", "Yesterday", "Monday, March 3". */
export function formatDay(ms) {
  const day = startOfDay(ms);
  const today = startOfDay(Date.now());
  if (day === today) return "Today";
  if (day === today - DAY_MS) return "Yesterday";
  return longDayFmt.format(new Date(ms));
}

/** Splits a 60-digit fingerprint ("12345 67890 ...") into its groups for the grid. */
export function fingerprintGroups(fingerprint) {
  return (fingerprint || "").split(/\s+/).filter(Boolean);
}

/** Renders a fingerprint into `el` as a grid of 5-digit groups. */
export function paintFingerprint(el, fingerprint) {
  el.replaceChildren(...fingerprintGroups(fingerprint).map((g) => h("span", { text: g })));
}

const UNITS = ["bytes", "KB", "MB", "GB", "TB"];

/** 1234567 → "1.2 MB" (decimal units, like the system's file manager). */
export function formatSize(n) {
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const shown = unit === 0 || value >= 100 ? Math.round(value) : value.toFixed(1);
  return `${shown} ${UNITS[unit]}`;
}
