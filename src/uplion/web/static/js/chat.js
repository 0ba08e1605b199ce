// The chat page: pick a model the token may use, talk to it with streamed answers, stop them,
// and keep the conversations in this browser.

import * as api from "./api.js";
import { $, h, replace } from "./dom.js";
import { History } from "./history.js";
import { render } from "./markdown.js";
import { session } from "./session.js";
import { dataEvents } from "./sse.js";

const MODELS_REFRESH_MS = 10000;

const page = {
  history: null,
  models: [],
  running: null, // the AbortController of the answer being streamed
  refresher: null,
};

const auth = session({
  check: () => api.call("GET", "/v1/models"),
  onSignedIn: start,
});

function start(models) {
  page.history = new History(api.tokenId());
  showModels(models.data);
  showConversations();
  showThread();
  clearInterval(page.refresher);
  page.refresher = setInterval(refreshModels, MODELS_REFRESH_MS);
  $("#prompt").focus();
}

async function refreshModels() {
  try {
    showModels((await api.call("GET", "/v1/models")).data);
  } catch (error) {
    if (error.status === 401) stopSession(error);
  }
}

function stopSession(error) {
  clearInterval(page.refresher);
  page.running?.abort();
  auth.expired(api.describe(error));
}

// Models ---------------------------------------------------------------------------------------

function showModels(listed) {
  // Chat is for text models; embedding models are listed by the API too but answer no chat.
  const models = listed.filter((model) => (model.serves ?? "text-generation") === "text-generation");
  page.models = models;
  const select = $("#model");
  const wanted = page.history.current?.model || select.value || models[0]?.id;
  replace(select, models.map((model) => h("option", { value: model.id },
    `${model.id} (${model.status?.phase ?? "unknown"})`)));
  if (models.some((m) => m.id === wanted)) select.value = wanted;
  if (!models.length) {
    select.append(h("option", { value: "" }, "No model available to this token"));
  }
  showModelStatus();
}

function showModelStatus() {
  const model = page.models.find((m) => m.id === $("#model").value);
  const status = $("#model-status");
  const phase = model?.status?.phase ?? "";
  status.className = `phase phase-${phase}`;
  let text = phase;
  if (phase === "Failed" || phase === "Degraded") {
    text = `${phase}: ${model.status.reason ?? "unknown reason"}${
      model.status.message ? ` (${model.status.message})` : ""}`;
  } else if (phase === "Pending") {
    text = "Pending: the first answer waits for a worker to start";
  }
  status.textContent = text;
}

$("#model").addEventListener("change", () => {
  const conversation = page.history?.current;
  if (conversation) {
    conversation.model = $("#model").value;
    page.history.save();
  }
  showModelStatus();
});

// Conversations --------------------------------------------------------------------------------

function showConversations() {
  const { history } = page;
  replace($("#conversation-list"), history.conversations.map((conversation) => h("li", {},
    h("button", {
      type: "button", class: "open",
      "aria-current": conversation.id === history.currentId ? "true" : "false",
      onclick: () => {
        if (page.running) return;
        history.select(conversation.id);
        if (page.models.some((m) => m.id === conversation.model)) {
          $("#model").value = conversation.model;
          showModelStatus();
        }
        showConversations();
        showThread();
      },
    }, conversation.title),
    h("button", {
      type: "button", class: "remove small", "aria-label": `Delete “${conversation.title}”`,
      title: "Delete", disabled: Boolean(page.running),
      onclick: () => {
        history.remove(conversation.id);
        showConversations();
        showThread();
      },
    }, "✕"))));
}

$("#new-chat").addEventListener("click", () => {
  if (page.running) return;
  page.history.create($("#model").value);
  showConversations();
  showThread();
  $("#prompt").focus();
});

// Messages -------------------------------------------------------------------------------------

function showThread() {
  const conversation = page.history.current;
  const list = $("#messages");
  if (!conversation || !conversation.messages.length) {
    replace(list, h("li", { class: "empty-thread" }, "Ask the model anything."));
    return;
  }
  replace(list, conversation.messages.map((message) => messageItem(message)));
  list.scrollTop = list.scrollHeight;
}

function messageItem(message) {
  const item = h("li", { class: `message ${message.role}` });
  fillMessage(item, message);
  return item;
}

function fillMessage(item, message) {
  if (message.role === "user") {
    replace(item, h("span", { class: "visually-hidden" }, "You: "), message.content);
    return;
  }
  item.setAttribute("aria-busy", message.pending ? "true" : "false");
  const body = h("div", { class: "body" });
  if (message.content) body.append(render(message.content));
  else if (message.pending) body.append(h("p", { class: "thinking" }, "Waiting for the model…"));
  replace(item,
    h("div", { class: "who" }, message.model || "assistant"),
    body,
    message.error ? h("p", { class: "error", role: "alert" }, message.error) : null,
    message.pending ? null : h("p", { class: "meta" }, meta(message)));
}

function meta(message) {
  const parts = [];
  if (message.usage) {
    parts.push(`${message.usage.prompt_tokens} prompt + ${message.usage.completion_tokens} `
      + `completion = ${message.usage.total_tokens} tokens`);
  }
  if (message.content && message.seconds !== undefined) parts.push(`${message.seconds.toFixed(1)} s`);
  if (message.stopped) parts.push("stopped");
  if (message.finish === "length") parts.push("cut at the max tokens");
  return parts.join(" · ");
}

// Sending --------------------------------------------------------------------------------------

function setRunning(controller) {
  page.running = controller;
  $("#send").disabled = Boolean(controller);
  $("#stop").disabled = !controller;
  $("#new-chat").disabled = Boolean(controller);
  showConversations();
}

async function send(text) {
  const model = $("#model").value;
  if (!model) return;
  const conversation = page.history.current ?? page.history.create(model);
  conversation.model = model;
  if (!conversation.messages.length) conversation.title = title(text);
  const asked = conversation.messages
    .filter((m) => (m.role === "user" || m.role === "assistant") && m.content)
    .map((m) => ({ role: m.role, content: m.content }));
  asked.push({ role: "user", content: text });
  conversation.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", model, content: "", pending: true };
  conversation.messages.push(reply);
  page.history.save();
  showThread();
  const item = $("#messages").lastElementChild;

  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  let frame = 0;
  const redraw = () => {
    frame = 0;
    const list = $("#messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    fillMessage(item, reply);
    if (atBottom) list.scrollTop = list.scrollHeight;
  };
  try {
    const response = await api.open("POST", "/v1/chat/completions", {
      model, messages: asked, stream: true, stream_options: { include_usage: true },
      ...options(),
    }, controller.signal);
    for await (const event of dataEvents(response)) {
      if (event.error) throw new api.ApiError(event.error.code === "timeout" ? 504 : 500, event.error);
      const choice = event.choices?.[0];
      if (choice?.delta?.content) {
        reply.content += choice.delta.content;
        if (!frame) frame = requestAnimationFrame(redraw);
      }
      if (choice?.finish_reason) reply.finish = choice.finish_reason;
      if (event.usage) reply.usage = event.usage;
    }
  } catch (error) {
    if (error.name === "AbortError") reply.stopped = true;
    else reply.error = api.describe(error);
    if (error.status === 401) stopSession(error);
  } finally {
    cancelAnimationFrame(frame);
    reply.pending = false;
    reply.seconds = (performance.now() - started) / 1000;
    page.history.save();
    setRunning(null);
    redraw();
  }
}

function title(text) {
  const line = text.replace(/\s+/g, " ");
  return line.length > 60 ? `${line.slice(0, 59)}…` : line;
}

function options() {
  const chosen = {};
  const maxTokens = Number.parseInt($("#max-tokens").value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) chosen.max_tokens = maxTokens;
  const temperature = Number.parseFloat($("#temperature").value);
  if (Number.isFinite(temperature)) chosen.temperature = temperature;
  return chosen;
}

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = $("#prompt");
  const text = field.value.trim();
  if (!text || page.running) return;
  field.value = "";
  send(text);
});

$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("#composer").requestSubmit();
  }
});

$("#stop").addEventListener("click", () => page.running?.abort());

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && page.running) page.running.abort();
});
