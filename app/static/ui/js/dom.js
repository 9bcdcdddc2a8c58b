// Tiny DOM helpers: h("tag.class#id", {attrs}, ...children), number formats.

export function h(spec, attrs = {}, ...children) {
  const [head, id] = spec.split("#");
  const [tag, ...classes] = head.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (id) el.id = id;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const fmt = (x, digits = 3) =>
  x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);

export const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);

export const shortId = (id) => (id ? id.slice(0, 8) : "–");

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

export function statusBadge(status) {
  return h(`span.status.${status}`, {}, status);
}

export function message(text, cls = "muted") {
  return h(`p.${cls}`, {}, text);
}

export function errorText(err) {
  if (!err) return "";
  const d = err.detail;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return err.message || String(err);
}
