// Modal forms (<dialog>): open one filled for a row, run its save, close it only on success.

import * as api from "./api.js";
import { $ } from "./dom.js";

export function modal(selector, onFailure) {
  const element = $(selector);
  const form = element.querySelector("form");
  const title = element.querySelector("h2");
  const problem = element.querySelector(".error");
  let save = null;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      await save(new FormData(form));
      element.close();
    } catch (error) {
      if (error.status === 401) {
        element.close();
        onFailure(error);
      } else {
        problem.textContent = api.describe(error);
      }
    }
  });
  for (const button of element.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => element.close());
  }

  return {
    /** Show it titled `heading`, after `fill(form)`; `onSave(formData)` runs on submit. */
    open(heading, fill, onSave) {
      title.textContent = heading;
      problem.textContent = "";
      fill(form);
      save = onSave;
      element.showModal();
    },
  };
}
