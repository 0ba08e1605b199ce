// The dashboard's models: live status, replicas, backlog, request rate, p95, traffic split;
// scaling, traffic and deletion of deployments; the deploy form (`/v1/modelDeployment`).

import * as api from "./api.js";
import { modal } from "./dialogs.js";
import { $, h, labelCells, replace } from "./dom.js";
import { count } from "./format.js";

const REFRESH_MS = 3000;
const NONE = "—";

export function modelsPanel({ announce, fail }) {
  const body = $("#models-table tbody");
  const rows = new Map(); // "name@version" -> {row, cells, actions}
  const scaleDialog = modal("#scale-dialog", fail);
  const trafficDialog = modal("#traffic-dialog", fail);
  let timer = null;

  async function refresh() {
    const [models, stats, deployments] = await Promise.all([
      api.call("GET", "/admin/models"),
      api.optional("GET", "/admin/stats?window=60"),
      api.optional("GET", "/v1/modelDeployment"),
    ]);
    const figures = new Map((stats?.data ?? []).map((f) => [`${f.model}@${f.version}`, f]));
    const deployed = new Map((deployments?.data ?? []).map((d) => [label(d), d]));
    const versions = new Map();
    for (const model of models.data) {
      versions.set(model.name, [...(versions.get(model.name) ?? []), model.version]);
    }
    const seen = new Set();
    models.data.forEach((model, index) => {
      const key = `${model.name}@${model.version}`;
      seen.add(key);
      const entry = rows.get(key) ?? addRow(key);
      fillRow(entry, model, figures.get(key), deployed.get(key), versions.get(model.name));
      if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] ?? null);
    });
    for (const [key, entry] of rows) {
      if (!seen.has(key)) {
        entry.row.remove();
        rows.delete(key);
      }
    }
    if (!models.data.length) {
      replace(body, h("tr", {}, h("td", { colspan: 8 }, "No model is served.")));
    }
    labelCells($("#models-table"));
  }

  function addRow(key) {
    const cells = Array.from({ length: 6 }, (_, i) => h("td", i === 3 || i === 4 ? { class: "num" } : {}));
    const actions = h("td");
    cells[5].classList.add("nowrap");
    const row = h("tr", { "data-model": key }, h("th", { scope: "row", class: "nowrap" }, key),
      cells, actions);
    const entry = { row, cells, actions, signature: null };
    rows.set(key, entry);
    return entry;
  }

  function fillRow(entry, model, figure, deployment, siblings) {
    const [status, replicas, backlog, rate, p95, traffic] = entry.cells;
    const phase = model.status.phase;
    const reason = model.status.reason
      ? `${model.status.reason}${model.status.message ? `: ${model.status.message}` : ""}`
      : (phase === "Running" ? "" : model.status.message ?? "");
    // One element per cell: on a phone a cell is a "heading: value" grid of two.
    replace(status, h("span", {}, h("span", { class: `phase phase-${phase}` }, phase),
      reason ? h("span", { class: "detail" }, reason) : null));
    replace(replicas, h("span", {}, `${model.status.replicas} live`,
      h("span", { class: "detail" }, `min ${model.replicas.min}, max ${model.replicas.max}`)));
    replace(backlog, h("span", {}, `${model.backlog.waiting} waiting`,
      h("span", { class: "detail" }, `${model.backlog.in_flight} in flight`)));
    rate.textContent = figure ? figure.requests_per_s.toFixed(2) : NONE;
    p95.textContent = figure ? milliseconds(figure.p95_ms) : NONE;
    traffic.textContent = trafficText(model);
    // The action buttons are rebuilt only when what they act on changes (keeps keyboard focus).
    const canSplit = Boolean(model.traffic) && siblings.length > 1;
    const signature = JSON.stringify([deployment?.id, canSplit, siblings]);
    if (signature === entry.signature) return;
    entry.signature = signature;
    replace(entry.actions, h("div", { class: "actions" },
      deployment ? h("button", {
        type: "button", class: "small secondary", onclick: () => scale(deployment),
      }, "Scale") : null,
      canSplit ? h("button", {
        type: "button", class: "small secondary", onclick: () => split(model, siblings),
      }, "Traffic") : null,
      deployment ? h("button", {
        type: "button", class: "small danger", onclick: () => remove(deployment),
      }, "Delete") : null,
      !deployment && !canSplit ? h("span", { class: "note" }, "models file") : null));
  }

  function trafficText(model) {
    const split = model.traffic;
    if (!split) return NONE;
    const canary = split.canary;
    if (canary && canary.version === model.version) return `canary · ${canary.weight} %`;
    if (split.stable === model.version) return `stable · ${100 - (canary?.weight ?? 0)} %`;
    return "pinned calls only";
  }

  function scale(deployment) {
    const replicas = deployment.replicas ?? deployment.model.replicas.min;
    scaleDialog.open(`Scale ${label(deployment)}`, (form) => {
      form.elements.replicas.value = replicas;
      form.elements.max.value = Math.max(deployment.model.replicas.max, replicas, 1);
    }, async (data) => {
      await api.call("PATCH", `/v1/modelDeployment/${deployment.id}`, {
        replicas: count(data.get("replicas")), max_replicas: count(data.get("max")),
      });
      announce(`${label(deployment)} scaled to ${data.get("replicas")} replicas.`);
      await refresh();
    });
  }

  function split(model, siblings) {
    const { name, traffic } = model;
    trafficDialog.open(`Traffic of ${name}`, (form) => {
      replace(form.elements.stable, siblings.map((v) => h("option", { value: v }, v)));
      replace(form.elements.canary, h("option", { value: "" }, "none"),
        siblings.map((v) => h("option", { value: v }, v)));
      form.elements.stable.value = traffic.stable;
      form.elements.canary.value = traffic.canary?.version ?? "";
      form.elements.weight.value = traffic.canary?.weight ?? 10;
    }, async (data) => {
      const canary = data.get("canary");
      await api.call("PUT", `/admin/models/${encodeURIComponent(name)}/traffic`, {
        stable: data.get("stable"),
        canary: canary ? { version: canary, weight: count(data.get("weight")) ?? 0 } : null,
      });
      announce(`Traffic of ${name} changed.`);
      await refresh();
    });
  }

  async function remove(deployment) {
    if (!confirm(`Delete ${label(deployment)}? Its workers finish their tasks and stop.`)) return;
    try {
      await api.call("DELETE", `/v1/modelDeployment/${deployment.id}`);
      announce(`${label(deployment)} deleted.`);
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      fail(error);
      if (error.status === 401) return;
    }
    timer = setTimeout(loop, REFRESH_MS);
  }

  wireDeployForm({ announce, fail, refresh });
  return {
    start() {
      clearTimeout(timer);
      loop();
    },
    refresh,
  };
}

function milliseconds(value) {
  return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
}

function label(deployment) {
  return `${deployment.name}@${deployment.version}`;
}

function wireDeployForm({ announce, fail, refresh }) {
  const form = $("#deploy-form");
  const problem = $("#deploy-error");
  const result = $("#deploy-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    result.textContent = "";
    const data = new FormData(form);
    let options = {};
    const rawOptions = String(data.get("options")).trim();
    if (rawOptions) {
      try {
        options = JSON.parse(rawOptions);
      } catch (error) {
        problem.textContent = `Engine options must be JSON: ${error.message}`;
        return;
      }
      if (typeof options !== "object" || options === null || Array.isArray(options)) {
        problem.textContent = "Engine options must be a JSON object, like {\"name\": value}.";
        return;
      }
    }
    const resources = (cpu, memory) => Object.fromEntries(
      [["cpu", String(data.get(cpu)).trim()], ["memory", String(data.get(memory)).trim()]]
        .filter(([, value]) => value),
    );
    const request = {
      type: data.get("type"),
      replicas: count(data.get("replicas")),
      gpus: count(data.get("gpus")) ?? 0,
      request_res: resources("cpu", "memory"),
      limit_res: resources("cpu_limit", "memory_limit"),
      model: {
        version: String(data.get("version")).trim() || "1",
        engine: {
          kind: data.get("engine"), device: data.get("device"),
          trust_pickle: data.get("trust_pickle") === "on", options,
        },
        concurrency: count(data.get("concurrency")) ?? 4,
        request_timeout_s: Number.parseFloat(data.get("timeout")) || 60,
      },
    };
    // Left empty, these mean: a generated name (md-<id>), no artifact, what the model says.
    for (const field of ["name", "source", "serves"]) {
      const value = String(data.get(field) ?? "").trim();
      if (value) request.model[field] = value;
    }
    try {
      const deployment = await api.call("POST", "/v1/modelDeployment", request);
      result.textContent = `Deployed ${label(deployment)} (${deployment.id}): `
        + `${deployment.status.phase}. Its status shows in Models.`;
      announce(result.textContent);
      form.elements.name.value = "";
      await refresh();
    } catch (error) {
      if (error.status === 401) fail(error);
      else problem.textContent = api.describe(error);
    }
  });
}
