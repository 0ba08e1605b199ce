// The dashboard's users and API tokens: create, disable, revoke, and set limits and quotas.
// A new token's secret is shown once, with a copy button, and is never kept by the page.

import * as api from "./api.js";
import { modal } from "./dialogs.js";
import { $, copy, h, labelCells, replace } from "./dom.js";
import * as format from "./format.js";

export function accountsPanel({ announce, fail }) {
  const limitsDialog = modal("#limits-dialog", fail);
  const people = { users: [], tokens: [] };

  async function refresh() {
    const [users, tokens] = await Promise.all([
      api.call("GET", "/admin/users"), api.call("GET", "/admin/tokens"),
    ]);
    people.users = users.data;
    people.tokens = tokens.data;
    showUsers();
    showTokens();
  }

  const userName = (id) => people.users.find((u) => u.id === id)?.name ?? id;

  function showUsers() {
    replace($("#users-table tbody"), people.users.map((user) => h("tr", { "data-user": user.name },
      h("th", { scope: "row" }, user.name),
      h("td", {}, h("code", {}, user.id)),
      h("td", {}, user.role),
      h("td", {}, user.active ? "active" : "disabled"),
      h("td", {}, format.limitsText(user.limits)),
      h("td", {}, format.quotaText(user.quota)),
      h("td", {}, format.modelsText(user.allowed_models)),
      h("td", {}, h("div", { class: "actions" },
        h("button", {
          type: "button", class: "small secondary", "aria-label": `Limits of ${user.name}`,
          onclick: () => editLimits(`Limits of user ${user.name}`, user,
            `/admin/users/${user.id}`),
        }, "Limits"),
        h("button", {
          type: "button", class: "small secondary",
          onclick: () => act(() => api.call("PATCH", `/admin/users/${user.id}`,
            { active: !user.active }), `${user.name} ${user.active ? "disabled" : "enabled"}.`),
        }, user.active ? "Disable" : "Enable"))))));
    labelCells($("#users-table"));
    const select = $("#token-user");
    const chosen = select.value;
    replace(select, people.users.filter((u) => u.active).map((user) =>
      h("option", { value: user.id }, `${user.name} (${user.role})`)));
    if (chosen) select.value = chosen;
  }

  function showTokens() {
    replace($("#tokens-table tbody"), people.tokens.map((token) => {
      const revoked = Boolean(token.revoked_at);
      return h("tr", { "data-token": token.id, class: revoked ? "revoked" : null },
        h("th", { scope: "row" }, h("code", {}, `${token.prefix}…`)),
        h("td", {}, userName(token.user_id)),
        h("td", {}, token.name),
        h("td", {}, format.when(token.created_at)),
        h("td", {}, format.when(token.expires_at)),
        h("td", {}, revoked ? `revoked ${format.when(token.revoked_at)}` : "active"),
        h("td", {}, format.limitsText(token.limits)),
        h("td", {}, format.quotaText(token.quota)),
        h("td", {}, revoked ? null : h("div", { class: "actions" },
          h("button", {
            type: "button", class: "small secondary", "aria-label": `Limits of token ${token.id}`,
            onclick: () => editLimits(`Limits of token ${token.prefix}…`, token,
              `/admin/tokens/${token.id}`),
          }, "Limits"),
          h("button", {
            type: "button", class: "small danger", "aria-label": `Revoke token ${token.id}`,
            onclick: () => revoke(token),
          }, "Revoke"))));
    }));
    labelCells($("#tokens-table"));
  }

  function editLimits(title, holder, path) {
    limitsDialog.open(title, (form) => {
      form.elements.rpm.value = holder.limits?.requests_per_minute ?? "";
      form.elements.tpm.value = holder.limits?.tokens_per_minute ?? "";
      form.elements.quota.value = holder.quota?.tokens ?? "";
      form.elements.period.value = holder.quota?.period ?? "month";
      form.elements.models.value = holder.allowed_models?.join(", ") ?? "";
    }, async (data) => {
      await api.call("PATCH", path, format.limitsOf(data));
      announce("Limits saved.");
      await refresh();
    });
  }

  async function revoke(token) {
    if (!confirm(`Revoke the token ${token.prefix}… of ${userName(token.user_id)}? `
      + "Every request with it is refused from now on; this cannot be undone.")) return;
    await act(() => api.call("POST", `/admin/tokens/${token.id}/revoke`),
      `Token ${token.prefix}… revoked.`);
  }

  async function act(change, done) {
    try {
      await change();
      announce(done);
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  submitting("#user-form", "#user-error", async (data) => {
    const user = await api.call("POST", "/admin/users", {
      name: String(data.get("name")).trim(), role: data.get("role"), ...format.limitsOf(data),
    });
    announce(`User ${user.name} created (${user.id}).`);
    await refresh();
    $("#token-user").value = user.id;
  }, fail);

  submitting("#token-form", "#token-error", async (data) => {
    const days = Number.parseFloat(data.get("days"));
    const created = await api.call("POST", "/admin/tokens", {
      user_id: data.get("user"), name: String(data.get("name")).trim(),
      expires_in_days: Number.isFinite(days) ? days : null, ...format.limitsOf(data),
    });
    $("#new-token-owner").textContent = userName(created.user_id);
    $("#new-token-value").value = created.token;
    $("#copy-status").textContent = "";
    $("#new-token").hidden = false;
    $("#copy-token").focus();
    await refresh();
  }, fail);

  $("#copy-token").addEventListener("click", async () => {
    const field = $("#new-token-value");
    const copied = await copy(field.value, field);
    $("#copy-status").textContent = copied
      ? "Copied to the clipboard."
      : "The token is selected: copy it with Ctrl+C (⌘C).";
  });
  $("#dismiss-token").addEventListener("click", () => {
    $("#new-token-value").value = "";
    $("#new-token").hidden = true;
  });

  return { refresh, userName };
}

/** Run `save(formData)` on submit; errors go in `problemSelector`, a 401 to `fail`. */
function submitting(formSelector, problemSelector, save, fail) {
  const form = $(formSelector);
  const problem = $(problemSelector);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      await save(new FormData(form));
      form.reset();
    } catch (error) {
      if (error.status === 401) fail(error);
      else problem.textContent = api.describe(error);
    }
  });
}
