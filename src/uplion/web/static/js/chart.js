// Stacked bar charts drawn as SVG: one bar per time bucket, one colour per series.

import { s } from "./dom.js";

// Okabe and Ito's palette: told apart by people with colour-vision deficiencies.
export const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
  "#F0E442", "#8C8C8C"];

const HEIGHT = 240;
const PAD = { top: 12, right: 8, bottom: 28, left: 56 };

/** A round upper bound for the axis (1, 2 or 5 times a power of ten). */
function ceiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((bound) => bound >= value);
}

function short(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return String(+value.toFixed(2));
}

/**
 * The chart of `series` ([{name, colour, values}]) over `labels` (one per bar), summarised in
 * `description` for screen readers (the table beside it has the figures). Drawn `width` units
 * wide: the width it is shown at, so that its text keeps its size.
 */
export function stackedBars({ labels, series, description, width = 720 }) {
  const WIDTH = Math.max(300, Math.round(width));
  const totals = labels.map((_, i) => series.reduce((sum, one) => sum + one.values[i], 0));
  const top = ceiling(Math.max(1, ...totals));
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const band = plotWidth / Math.max(1, labels.length);
  const y = (value) => PAD.top + plotHeight - (value / top) * plotHeight;

  const chart = s("svg", {
    class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": description,
  });
  for (const tick of [0, top / 2, top]) {
    chart.append(
      s("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(tick), y2: y(tick) }),
      s("text", { x: PAD.left - 6, y: y(tick) + 4, "text-anchor": "end" }, short(tick)),
    );
  }
  labels.forEach((label, i) => {
    let base = 0;
    for (const one of series) {
      const value = one.values[i];
      if (!value) continue;
      chart.append(s("rect", {
        x: PAD.left + i * band + band * 0.1, width: Math.max(1, band * 0.8),
        y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)), fill: one.colour,
      }, s("title", {}, `${label} · ${one.name}: ${value}`)));
      base += value;
    }
  });
  const every = Math.max(1, Math.ceil(labels.length / Math.max(2, Math.floor(WIDTH / 110))));
  labels.forEach((label, i) => {
    if (i % every) return;
    chart.append(s("text", {
      x: PAD.left + i * band + band / 2, y: HEIGHT - 8, "text-anchor": "middle",
    }, label));
  });
  return chart;
}

/** A small colour square for a legend. */
export function swatch(colour) {
  return s("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" },
    s("rect", { width: 10, height: 10, fill: colour }));
}
