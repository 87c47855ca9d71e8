// The chat page: lists the server's models, streams each answer from
// /v1/chat/completions (server-sent events read with fetch), keeps the
// conversation, and reports speed and cache hits per answer.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("composer");
const input = $("message");
const modelSelect = $("model");
const maxTokens = $("max-tokens");
const log = $("log");
const errorBox = $("error");
const sendButton = $("send");
const stopButton = $("stop");

/** The conversation sent with every request, as `{role, content}`. */
let history = [];
/** Aborts the answer being streamed; null when idle. */
let controller = null;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
  if (message) errorBox.scrollIntoView({ block: "end" });
}

/** The readable reason of a failed response: the OpenAI error's message if any. */
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body.error) return body.error.message || JSON.stringify(body.error);
  } catch (_) {
    // Not JSON: show the status and the text as they came.
  }
  return `${response.status} ${response.statusText} ${text}`.trim();
}

/** Where the API key of a server that asks for one is kept. */
const KEY_ITEM = "tern-api-key";

/**
 * fetch() with the stored API key; on a 401 asks for a key once, keeps it
 * in this browser, and tries again.
 */
async function api(path, options = {}) {
  const send = () => {
    const key = localStorage.getItem(KEY_ITEM);
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    return fetch(path, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) {
      localStorage.setItem(KEY_ITEM, key.trim());
      response = await send();
    }
  }
  return response;
}

async function loadModels() {
  try {
    const response = await api("/v1/models");
    if (!response.ok) throw new Error(await errorMessage(response));
    const { data } = await response.json();
    if (!data.length) throw new Error("the server lists no models");
    modelSelect.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    modelSelect.disabled = false;
  } catch (e) {
    showError(`Could not list the models: ${e.message}`);
  }
}

/** Appends a message to the log and returns its parts. */
function addMessage(role, content) {
  const item = document.createElement("li");
  item.className = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = content;
  const meta = document.createElement("p");
  meta.className = "meta";
  item.append(label, text, meta);
  log.append(item);
  item.scrollIntoView({ block: "end" });
  return { item, text, meta };
}

/** Yields the JSON payload of each server-sent event until `[DONE]`. */
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

/** The line under an answer: speed, size, time, finish and cache. */
function describe(usage, seconds, finish, cached) {
  const parts = [];
  if (usage && seconds > 0) {
    const rate = usage.completion_tokens / seconds;
    parts.push(`${rate.toFixed(1)} tokens/s`, `${usage.completion_tokens} tokens in ${seconds.toFixed(2)} s`);
  } else {
    parts.push(`${seconds.toFixed(2)} s (no usage reported)`);
  }
  if (finish === "length") parts.push("cut at max tokens");
  else if (finish && finish !== "stop") parts.push(`finished: ${finish}`);
  const cache = document.createElement("span");
  cache.className = cached ? "cached" : "";
  cache.textContent = cached ? "cached" : "not cached";
  return [parts.join(" · ") + " · ", cache];
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.disabled = !busy;
  modelSelect.disabled = busy || modelSelect.options.length === 0;
}

async function send(content) {
  showError("");
  history.push({ role: "user", content });
  const question = addMessage("user", content);
  const answer = addMessage("assistant", "");
  answer.item.setAttribute("aria-busy", "true");
  answer.meta.textContent = "waiting…";
  controller = new AbortController();
  setBusy(true);

  const started = performance.now();
  let reply = "";
  let usage = null;
  let finish = null;
  let cached = false;
  try {
    const request = {
      model: modelSelect.value,
      messages: history,
      stream: true,
      stream_options: { include_usage: true },
    };
    const limit = Number.parseInt(maxTokens.value, 10);
    if (limit > 0) request.max_tokens = limit;
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    cached = (response.headers.get("x-cache") || "").toLowerCase() === "hit";
    for await (const chunk of events(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message || "the server failed mid-answer");
      if (chunk.cached === true) cached = true;
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          answer.text.textContent = reply;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    history.push({ role: "assistant", content: reply });
    answer.meta.replaceChildren(...describe(usage, (performance.now() - started) / 1000, finish, cached));
  } catch (e) {
    if (e.name === "AbortError") {
      // What was shown stays part of the conversation.
      if (reply) history.push({ role: "assistant", content: reply });
      else history.pop();
      answer.meta.textContent = "stopped";
    } else {
      // The turn failed: drop it from the conversation and the log, and
      // give the text back to edit and resend.
      history.pop();
      question.item.remove();
      answer.item.remove();
      if (!input.value) input.value = content;
      showError(e.message);
    }
  } finally {
    controller = null;
    answer.item.removeAttribute("aria-busy");
    setBusy(false);
    input.focus();
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = input.value.trim();
  if (!content || controller || modelSelect.disabled) return;
  input.value = "";
  send(content);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => controller && controller.abort());
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && controller) controller.abort();
});

$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  log.replaceChildren();
  showError("");
  input.focus();
});

loadModels();
