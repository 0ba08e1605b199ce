// The dashboard's usage: per model, user or token over time (from the hourly billing rows of
// `/admin/usage`), as a stacked bar chart, a table of totals, and a CSV export of the rows.

import * as api from "./api.js";
import { COLOURS, stackedBars, swatch } from "./chart.js";
import { download, toCsv } from "./csv.js";
import { $, h, labelCells, replace } from "./dom.js";
import { number } from "./format.js";

const HOUR_MS = 3600 * 1000;
const DAY_MS = 24 * HOUR_MS;
const MAX_SERIES = COLOURS.length - 1; // the rest is summed as "others"
const GROUP_NAMES = { model: "Model", user_id: "User", token_id: "Token" };
const CSV_HEADER = ["hour", "user_id", "user_name", "token_id", "model", "requests", "errors",
  "prompt_tokens", "completion_tokens", "latency_ms_total"];

export function usagePanel({ fail, userName }) {
  const form = $("#usage-form");
  let loaded = { rows: [], since: new Date(), step: DAY_MS };
  let drawnWidth = 0;

  async function refresh() {
    $("#usage-error").textContent = "";
    const hours = Number.parseInt(form.elements.range.value, 10);
    const step = hours > 48 ? DAY_MS : HOUR_MS;
    const since = new Date(Math.floor((Date.now() - hours * HOUR_MS) / step) * step);
    try {
      const answer = await api.call("GET", `/admin/usage?since=${encodeURIComponent(since.toISOString())}`);
      loaded = { rows: answer.data, since, step };
    } catch (error) {
      if (error.status === 401) fail(error);
      else $("#usage-error").textContent = api.describe(error);
      return;
    }
    show();
  }

  function label(group, key) {
    if (group === "user_id") return userName(key);
    if (group === "token_id") return `upl-${key}`;
    return key;
  }

  function show() {
    const { step } = loaded;
    drawnWidth = $("#usage-chart").clientWidth;
    const group = form.elements.group.value;
    const measure = form.elements.measure.value;
    const value = (row) => (measure === "tokens" ? row.prompt_tokens + row.completion_tokens
      : row[measure]);
    const start = loaded.since.getTime();
    const buckets = Math.max(1, Math.ceil((Date.now() - start) / step));
    const stamp = (i) => {
      const moment = new Date(start + i * step);
      return step === DAY_MS ? moment.toISOString().slice(5, 10)
        : `${moment.toISOString().slice(5, 10)} ${moment.toISOString().slice(11, 13)}h`;
    };
    const totals = new Map();
    for (const row of loaded.rows) {
      const key = row[group];
      const sum = totals.get(key) ?? { requests: 0, errors: 0, prompt: 0, completion: 0, latency: 0, value: 0 };
      sum.requests += row.requests;
      sum.errors += row.errors;
      sum.prompt += row.prompt_tokens;
      sum.completion += row.completion_tokens;
      sum.latency += row.latency_ms_total;
      sum.value += value(row);
      totals.set(key, sum);
    }
    const ranked = [...totals.keys()].sort((a, b) => totals.get(b).value - totals.get(a).value);
    const shown = ranked.length > MAX_SERIES + 1 ? ranked.slice(0, MAX_SERIES) : ranked;
    const series = shown.map((key, i) => ({
      key, name: label(group, key), colour: COLOURS[i], values: new Array(buckets).fill(0),
    }));
    if (shown.length < ranked.length) {
      series.push({ key: null, name: "others", colour: COLOURS[MAX_SERIES], values: new Array(buckets).fill(0) });
    }
    const byKey = new Map(series.map((one) => [one.key, one]));
    for (const row of loaded.rows) {
      const index = Math.floor((Date.parse(row.hour) - start) / step);
      if (index < 0 || index >= buckets) continue;
      (byKey.get(row[group]) ?? byKey.get(null)).values[index] += value(row);
    }
    const grand = series.reduce((sum, one) => sum + one.values.reduce((a, b) => a + b, 0), 0);
    const per = step === DAY_MS ? "day" : "hour";
    const description = `${measure} per ${per} and ${GROUP_NAMES[group].toLowerCase()}: `
      + `${number(grand)} in all`;
    $("#usage-summary").textContent = loaded.rows.length
      ? `${description[0].toUpperCase()}${description.slice(1)} (UTC).`
      : "No usage in this period.";
    replace($("#usage-chart"), loaded.rows.length
      ? stackedBars({
        labels: Array.from({ length: buckets }, (_, i) => stamp(i)), series, description,
        width: drawnWidth || 720,
      })
      : null);
    replace($("#usage-legend"), series.map((one) => h("li", {}, swatch(one.colour), one.name,
      ` (${number(one.values.reduce((a, b) => a + b, 0))})`)));
    $("#usage-group-head").textContent = GROUP_NAMES[group];
    replace($("#usage-table tbody"), ranked.map((key) => {
      const sum = totals.get(key);
      return h("tr", {},
        h("th", { scope: "row" }, label(group, key)),
        h("td", { class: "num" }, number(sum.requests)),
        h("td", { class: "num" }, number(sum.errors)),
        h("td", { class: "num" }, number(sum.prompt)),
        h("td", { class: "num" }, number(sum.completion)),
        h("td", { class: "num" }, sum.requests ? `${Math.round(sum.latency / sum.requests)} ms` : "—"));
    }));
    labelCells($("#usage-table"));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  form.addEventListener("change", () => refresh());
  // Redrawn at the width it is shown at (a phone turned, a window resized).
  new ResizeObserver(() => {
    const width = $("#usage-chart").clientWidth;
    if (width && Math.abs(width - drawnWidth) > 40 && loaded.rows.length) show();
  }).observe($("#usage-chart"));
  $("#usage-csv").addEventListener("click", () => {
    const rows = loaded.rows.map((row) => [row.hour, row.user_id, userName(row.user_id),
      row.token_id, row.model, row.requests, row.errors, row.prompt_tokens,
      row.completion_tokens, row.latency_ms_total]);
    const day = new Date().toISOString().slice(0, 10);
    download(`uplion-usage-${day}.csv`, toCsv(CSV_HEADER, rows));
  });

  return { refresh };
}
