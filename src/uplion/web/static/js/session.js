// Signing in and out, shared by the pages: a token is tried with `check` before it is kept.

import * as api from "./api.js";
import { $ } from "./dom.js";

/**
 * Wire the page's sign-in form. `check()` proves the token works for this page (its answer goes
 * to `onSignedIn`); a refused token is forgotten (401) or kept for the other page (403).
 * Returns `expired(message)`, for calls that find the token refused later on.
 */
export function session({ check, onSignedIn }) {
  const section = $("#sign-in");
  const form = $("#sign-in-form");
  const field = $("#token");
  const problem = $("#sign-in-error");
  const signOut = $("#sign-out");
  const content = $("#signed-in");

  function showSignIn(message) {
    content.hidden = true;
    signOut.hidden = true;
    section.hidden = false;
    problem.textContent = message || "";
    field.focus();
  }

  async function attempt() {
    let answer;
    try {
      answer = await check();
    } catch (error) {
      if (error.status === 401) api.forget();
      showSignIn(api.describe(error));
      return;
    }
    section.hidden = true;
    content.hidden = false;
    signOut.hidden = false;
    await onSignedIn(answer);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = field.value.trim();
    if (!value) return;
    api.remember(value);
    field.value = "";
    attempt();
  });
  signOut.addEventListener("click", () => {
    api.forget();
    location.reload();
  });

  if (api.token()) attempt();
  else showSignIn("");

  return {
    expired(message) {
      api.forget();
      showSignIn(message);
    },
  };
}
