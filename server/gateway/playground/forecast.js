// Forecasts: a CSV series -> /v1/forecasts -> history and forecast on one SVG plot.

import { $, describe, fillPicker, onModels, readFile, request, showError } from "./app.js";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
const BOX = { w: 800, h: 320, left: 56, right: 16, top: 16, bottom: 36 };

/**
 * CSV text -> {names, channels: [[...], ...], timestamps | null}. One column per channel, one row
 * per step; a header row when its cells are not all numbers; a first column of non-numbers
 * (ISO dates) as timestamps.
 */
export function parseCsv(text) {
  const rows = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"))
    .map((l) => l.split(/[,;\t]/).map((c) => c.trim()));
  if (!rows.length) throw new Error("the series is empty: paste or upload a CSV");
  const numeric = (c) => c !== "" && Number.isFinite(Number(c));
  let names = null;
  if (!rows[0].every(numeric)) {
    const second = rows[1] || [];
    // a header: the first row has words where the second has numbers
    if (rows[0].some((c, j) => !numeric(c) && numeric(second[j] || ""))) names = rows.shift();
  }
  if (!rows.length) throw new Error("the CSV has a header but no values");
  const hasTime = !numeric(rows[0][0]);
  const width = rows[0].length;
  const channels = Array.from({ length: width - (hasTime ? 1 : 0) }, () => []);
  const timestamps = hasTime ? [] : null;
  rows.forEach((row, i) => {
    if (row.length !== width) throw new Error(`row ${i + 1} has ${row.length} cells, the first has ${width}`);
    if (hasTime) timestamps.push(row[0]);
    row.slice(hasTime ? 1 : 0).forEach((cell, j) => {
      if (!numeric(cell)) throw new Error(`row ${i + 1}, column ${j + 1 + (hasTime ? 1 : 0)}: ${JSON.stringify(cell)} is not a number`);
      channels[j].push(Number(cell));
    });
  });
  if (!channels.length) throw new Error("the CSV has timestamps but no value column");
  const labels = names ? names.slice(hasTime ? 1 : 0) : channels.map((_, j) => `channel ${j}`);
  return { names: labels, channels, timestamps };
}

function node(tag, attrs, parent) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (parent) parent.append(n);
  return n;
}

function ticks(lo, hi, n = 5) {
  const span = hi - lo || 1;
  const step = 10 ** Math.floor(Math.log10(span / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => span / s <= n) || step * 10;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-9; v += nice) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Draw history (solid) and forecast (dashed, continuing from the last point) per channel. */
export function plot(svg, { names, channels }, forecasts) {
  svg.replaceChildren();
  const n = channels[0].length;
  const horizon = forecasts.length ? forecasts[0].values.length : 0;
  const all = channels.flat().concat(forecasts.flatMap((f) => f.values));
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  const pad = (hi - lo) * 0.05 || 1;
  lo -= pad; hi += pad;
  const W = BOX.w - BOX.left - BOX.right;
  const H = BOX.h - BOX.top - BOX.bottom;
  const x = (t) => BOX.left + (t / Math.max(1, n + horizon - 1)) * W;
  const y = (v) => BOX.top + (1 - (v - lo) / (hi - lo)) * H;
  const axes = node("g", { class: "axes" }, svg);
  for (const v of ticks(lo, hi)) {
    node("line", { x1: BOX.left, x2: BOX.w - BOX.right, y1: y(v), y2: y(v), class: "grid" }, axes);
    node("text", { x: BOX.left - 6, y: y(v) + 4, "text-anchor": "end" }, axes).textContent = String(v);
  }
  for (const t of ticks(0, n + horizon - 1).filter(Number.isInteger)) {
    node("text", { x: x(t), y: BOX.h - BOX.bottom + 16, "text-anchor": "middle" }, axes).textContent = String(t);
  }
  node("line", { x1: x(n - 1), x2: x(n - 1), y1: BOX.top, y2: BOX.h - BOX.bottom, class: "now" }, axes);
  const line = (points) => points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(2)},${y(v).toFixed(2)}`).join("");
  channels.forEach((values, c) => {
    const colour = COLOURS[c % COLOURS.length];
    node("path", { d: line(values.map((v, t) => [t, v])), stroke: colour, class: "history",
      "data-channel": c, "data-values": JSON.stringify(values) }, svg);
    const f = forecasts.find((fc) => fc.index === c);
    if (f) {
      const points = [[n - 1, values[n - 1]], ...f.values.map((v, k) => [n + k, v])];
      node("path", { d: line(points), stroke: colour, class: "forecast",
        "data-channel": c, "data-values": JSON.stringify(f.values) }, svg);
    }
    const label = node("text", { x: BOX.left + 8 + 110 * c, y: BOX.top + 12, class: "legend" }, svg);
    label.textContent = names[c];
    label.style.fill = colour; // over the stylesheet's text colour
  });
}

async function run() {
  showError($("fc-error"), null);
  let series;
  try {
    series = parseCsv($("fc-csv").value);
  } catch (exc) {
    return showError($("fc-error"), exc.message);
  }
  const body = { model: $("fc-model").value, series: series.channels.length === 1 ? series.channels[0] : series.channels };
  const horizon = $("fc-horizon").value;
  if (horizon) body.horizon = Number(horizon);
  if (series.timestamps) body.timestamps = series.timestamps;
  $("fc-run").disabled = true;
  try {
    const out = await (await request("v1/forecasts", { method: "POST", body })).json();
    plot($("fc-plot"), series, out.forecasts);
    $("fc-plot").dataset.horizon = String(out.horizon);
  } catch (exc) {
    showError($("fc-error"), describe(exc));
  } finally {
    $("fc-run").disabled = false;
  }
}

function example() {
  const rows = ["demand,temperature"];
  for (let t = 0; t < 48; t++) {
    const a = 10 + 0.05 * t + 3 * Math.sin((2 * Math.PI * t) / 12);
    const b = 15 + 5 * Math.cos((2 * Math.PI * t) / 24);
    rows.push(`${a.toFixed(3)},${b.toFixed(3)}`);
  }
  $("fc-csv").value = rows.join("\n");
}

export function initForecast() {
  onModels((models) => fillPicker($("fc-model"), models, "forecasts"));
  $("fc-example").addEventListener("click", example);
  $("fc-file").addEventListener("change", async () => {
    const file = $("fc-file").files[0];
    if (file) $("fc-csv").value = await readFile(file, "text");
  });
  $("fc-form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
}
