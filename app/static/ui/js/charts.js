// Charts: uPlot (vendored) for the training curves, hand-written SVG for the rest.
import uPlot from "../../vendor/uplot-1.6.32/uPlot.esm.js";
import { fmt, h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#c53030", "#319795", "#b7791f"];

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const title = (text) => s("title", {}, text);

function phaseColor(phase, i) {
  if (phase === "model") return PALETTE[0];
  if (phase === "baseline") return PALETTE[1];
  return PALETTE[2 + (i % (PALETTE.length - 2))];
}

// Per-epoch curves of every phase of a job ("model", "baseline", "tau=…") on one chart:
// train loss and validation NLL on the left axis, validation accuracy on the right.
export function trainingCurves(container, history) {
  const phases = [...new Set(history.map((e) => e.phase || "model"))];
  const epochs = [...new Set(history.map((e) => e.epoch))].sort((a, b) => a - b);
  const at = new Map(epochs.map((e, i) => [e, i]));
  const data = [epochs];
  const series = [{ label: "epoch" }];
  phases.forEach((phase, i) => {
    const color = phaseColor(phase, i);
    const loss = epochs.map(() => null);
    const nll = epochs.map(() => null);
    const acc = epochs.map(() => null);
    for (const e of history) {
      if ((e.phase || "model") !== phase) continue;
      const j = at.get(e.epoch);
      loss[j] = e.train_loss ?? null;
      nll[j] = e.val?.nll ?? null;
      acc[j] = e.val?.accuracy ?? null;
    }
    data.push(loss, nll, acc);
    series.push(
      { label: `${phase} train loss`, stroke: color, width: 1, dash: [2, 3], scale: "loss", spanGaps: true },
      { label: `${phase} val NLL`, stroke: color, width: 2, scale: "loss", spanGaps: true },
      { label: `${phase} val accuracy`, stroke: color, width: 2, dash: [8, 4], scale: "acc", spanGaps: true,
        value: (u, v) => (v === null ? "–" : v.toFixed(3)) },
    );
  });
  container.replaceChildren();
  const width = Math.max(320, container.clientWidth || 600);
  const opts = {
    width,
    height: 300,
    scales: { x: { time: false }, acc: { range: [0, 1] } },
    axes: [
      { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] },
      { label: "loss / NLL", scale: "loss" },
      { label: "accuracy", scale: "acc", side: 1, grid: { show: false } },
    ],
    series,
    legend: { live: true },
  };
  return new uPlot(opts, data, container);
}

// Normalise a reliability record: {bin_edges, accuracy, confidence, count} or a list of
// {lower, upper, accuracy, confidence, count} bins.
export function reliabilityBins(rel) {
  if (!rel) return null;
  if (Array.isArray(rel)) return rel;
  const { bin_edges: edges, accuracy, confidence, count } = rel;
  if (!edges || !accuracy) return null;
  return accuracy.map((a, i) => ({
    lower: edges[i], upper: edges[i + 1], accuracy: a,
    confidence: confidence ? confidence[i] : null, count: count ? count[i] : null,
  }));
}

// Reliability diagram: per confidence bin, the accuracy (bar) against the mean confidence
// (tick), the diagonal is perfect calibration.
export function reliabilityDiagram(bins, label) {
  const W = 320, H = 260, L = 40, B = 30, T = 10, R = 10;
  const x = (v) => L + v * (W - L - R);
  const y = (v) => H - B - v * (H - B - T);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "reliability" });
  svg.append(s("rect", { x: L, y: T, width: W - L - R, height: H - B - T, fill: "#fafbfc", stroke: "#d9dee4" }));
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(
      s("text", { x: x(t), y: H - B + 14, "text-anchor": "middle", "font-size": 10 }, t),
      s("text", { x: L - 4, y: y(t) + 3, "text-anchor": "end", "font-size": 10 }, t),
    );
  }
  svg.append(
    s("text", { x: (L + W) / 2, y: H - 2, "text-anchor": "middle", "font-size": 11 }, "confidence"),
    s("text", { x: 10, y: (H - B) / 2, "font-size": 11, transform: `rotate(-90 10 ${(H - B) / 2})`, "text-anchor": "middle" }, "accuracy"),
  );
  for (const b of bins) {
    if (!b.count || b.accuracy === null || b.accuracy === undefined) continue;
    svg.append(
      s("rect", {
        x: x(b.lower) + 1, y: y(b.accuracy), width: Math.max(1, x(b.upper) - x(b.lower) - 2),
        height: y(0) - y(b.accuracy), fill: "#2b6cb0", "fill-opacity": 0.75,
      }, title(`(${fmt(b.lower, 2)}, ${fmt(b.upper, 2)}]: accuracy ${fmt(b.accuracy)}, confidence ${fmt(b.confidence)}, ${b.count} examples`)),
    );
    if (b.confidence !== null && b.confidence !== undefined) {
      svg.append(s("line", { x1: x(b.lower) + 1, x2: x(b.upper) - 1, y1: y(b.confidence), y2: y(b.confidence), stroke: "#c53030", "stroke-width": 2 }));
    }
  }
  svg.append(s("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), stroke: "#66707c", "stroke-dasharray": "4 3" }));
  return h("figure", {}, svg, h("figcaption.legend-note", {}, `${label}: bars accuracy, red ticks mean confidence, dashed line perfect calibration`));
}

// Heatmap of a K×K matrix (the noise report's flip_matrix), rows "from", columns "to".
// `onCell(i, j)`, when given, is called with the row and column of a clicked cell.
export function heatmap(matrix, names, onCell) {
  const K = matrix.length;
  const cell = Math.max(12, Math.min(36, Math.floor(420 / K)));
  const L = 70, T = 70;
  const W = L + K * cell + 10, H = T + K * cell + 10;
  let max = 0;
  matrix.forEach((row, i) => row.forEach((v, j) => { if (i !== j && v > max) max = v; }));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "heatmap" });
  const label = (i) => String(names?.[i] ?? i);
  for (let i = 0; i < K; i++) {
    svg.append(
      s("text", { x: L - 4, y: T + i * cell + cell / 2 + 3, "text-anchor": "end", "font-size": 10 }, label(i)),
      s("text", { x: L + i * cell + cell / 2, y: T - 4, "font-size": 10, transform: `rotate(-60 ${L + i * cell + cell / 2} ${T - 4})` }, label(i)),
    );
    for (let j = 0; j < K; j++) {
      const v = matrix[i][j] ?? 0;
      const a = i === j || max === 0 ? 0 : Math.sqrt(v / max);
      const rect = s("rect", {
        x: L + j * cell, y: T + i * cell, width: cell - 1, height: cell - 1,
        fill: i === j ? "#edf0f3" : `rgba(197, 48, 48, ${a.toFixed(3)})`, stroke: "#e5e8ec",
        "data-row": i, "data-col": j, class: onCell && i !== j ? "pickable" : null,
      }, title(`${label(i)} → ${label(j)}: ${fmt(v, 4)}`));
      if (onCell && i !== j) rect.addEventListener("click", () => onCell(i, j));
      svg.append(rect);
    }
  }
  return svg;
}

// Probabilities as horizontal bars with ±2·mc_stderr whiskers and the noise std beside.
export function probabilityBars(pred, names, { maxRows = 12 } = {}) {
  const K = pred.probs.length;
  const order = [...Array(K).keys()].sort((a, b) => pred.probs[b] - pred.probs[a]).slice(0, maxRows);
  const rowH = 22, L = 110, W = 520, barW = 300, T = 18;
  const H = T + order.length * rowH + 6;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "probs" });
  svg.append(
    s("text", { x: L, y: 12, "font-size": 10, fill: "#66707c" }, "probability (whiskers ±2 MC std. err.)"),
    s("text", { x: L + barW + 16, y: 12, "font-size": 10, fill: "#66707c" }, "noise std"),
  );
  order.forEach((k, r) => {
    const p = pred.probs[k];
    const y = T + r * rowH;
    const err = pred.mc_stderr ? 2 * pred.mc_stderr[k] : null;
    svg.append(
      s("text", { x: L - 6, y: y + 14, "text-anchor": "end", "font-size": 11 }, String(names?.[k] ?? k)),
      s("rect", { x: L, y: y + 3, width: barW, height: rowH - 8, fill: "#edf0f3" }),
      s("rect", { x: L, y: y + 3, width: Math.max(0.5, p * barW), height: rowH - 8, fill: k === pred.label ? "#2b6cb0" : "#90b4dc" },
        title(`${names?.[k] ?? k}: ${fmt(p, 4)}${err === null ? "" : ` ± ${fmt(err, 4)}`}`)),
    );
    if (err !== null && err !== undefined) {
      const x0 = L + Math.max(0, p - err) * barW, x1 = L + Math.min(1, p + err) * barW, ym = y + rowH / 2 - 1;
      svg.append(
        s("line", { x1: x0, x2: x1, y1: ym, y2: ym, stroke: "#1d232b", "stroke-width": 1.5, class: "errbar" }),
        s("line", { x1: x0, x2: x0, y1: ym - 4, y2: ym + 4, stroke: "#1d232b" }),
        s("line", { x1: x1, x2: x1, y1: ym - 4, y2: ym + 4, stroke: "#1d232b" }),
      );
    }
    svg.append(
      s("text", { x: L + barW + 6, y: y + 14, "font-size": 10, "text-anchor": "start" }, fmt(p, 3)),
      s("text", { x: L + barW + 54, y: y + 14, "font-size": 10 }, pred.noise_std ? fmt(pred.noise_std[k], 3) : "–"),
    );
  });
  return svg;
}

// The entropy split: H[p̂] = E_s H[softmax(u_s/τ)] + (H[p̂] − E_s H[…]); both parts are
// label noise (aleatoric), scaled to log K.
export function entropySplit(entropy, expected, K) {
  const W = 520, L = 110, barW = 300, H = 40;
  const maxH = Math.log(Math.max(2, K));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "entropy" });
  const we = Math.max(0, Math.min(1, expected / maxH)) * barW;
  const wt = Math.max(0, Math.min(1, entropy / maxH)) * barW;
  svg.append(
    s("text", { x: L - 6, y: 16, "text-anchor": "end", "font-size": 11 }, "entropy"),
    s("rect", { x: L, y: 4, width: barW, height: 16, fill: "#edf0f3" }, title(`log K = ${fmt(maxH)}`)),
    s("rect", { x: L, y: 4, width: we, height: 16, fill: "#805ad5" }, title(`expected entropy ${fmt(expected)}`)),
    s("rect", { x: L + we, y: 4, width: Math.max(0, wt - we), height: 16, fill: "#d6bcfa" }, title(`entropy − expected entropy ${fmt(entropy - expected)}`)),
    s("text", { x: L + barW + 6, y: 16, "font-size": 10 }, `${fmt(entropy)} of log K ${fmt(maxH, 2)}`),
    s("text", { x: L, y: 34, "font-size": 10, fill: "#66707c" }, `dark: expected entropy ${fmt(expected)} · light: entropy − expected ${fmt(entropy - expected)}`),
  );
  return svg;
}
