// The admin dashboard: models, deployments, users, tokens and usage, for an admin token.

import * as api from "./api.js";
import { accountsPanel } from "./admin-accounts.js";
import { modelsPanel } from "./admin-models.js";
import { usagePanel } from "./admin-usage.js";
import { $ } from "./dom.js";
import { session } from "./session.js";

const banner = $("#admin-error");
const announcer = $("#announce");

function announce(message) {
  banner.textContent = "";
  announcer.textContent = message;
}

/** A failed action: a refused token ends the session, anything else shows in the banner. */
function fail(error) {
  if (error.status === 401) auth.expired(api.describe(error));
  else banner.textContent = api.describe(error);
}

const accounts = accountsPanel({ announce, fail });
const models = modelsPanel({ announce, fail });
const usage = usagePanel({ fail, userName: accounts.userName });

const auth = session({
  check: () => api.call("GET", "/admin/users"),
  onSignedIn: async () => {
    banner.textContent = "";
    models.start();
    try {
      await accounts.refresh();
    } catch (error) {
      fail(error);
    }
    await usage.refresh();
  },
});
