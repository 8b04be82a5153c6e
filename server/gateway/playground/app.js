// The playground's shell: keys, the API helper, the model list, tabs.
// Every path is relative to /playground/, so the page also works behind a proxy's prefix.

import { initAdapters } from "./adapters.js";
import { initChat } from "./chat.js";
import { initForecast } from "./forecast.js";
import { initRealtime } from "./realtime.js";
import { initSegment } from "./segment.js";

export const $ = (id) => document.getElementById(id);

const KEYS = { api: "floe.apiKey", admin: "floe.adminKey" };

export const keys = {
  get api() { return sessionStorage.getItem(KEYS.api) || ""; },
  set api(v) { v ? sessionStorage.setItem(KEYS.api, v) : sessionStorage.removeItem(KEYS.api); },
  get admin() { return sessionStorage.getItem(KEYS.admin) || ""; },
  set admin(v) { v ? sessionStorage.setItem(KEYS.admin, v) : sessionStorage.removeItem(KEYS.admin); },
};

/** An OpenAI error body (or a network failure) as an exception. */
export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export function apiUrl(path) {
  return new URL(`../${path.replace(/^\//, "")}`, location.href).toString();
}

async function errorFrom(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const err = body && body.error;
  const message = (err && err.message) || `${response.status} ${response.statusText}`;
  return new ApiError(response.status, message, err && err.code, err && err.param);
}

/** fetch() on the API with the Bearer key; returns the Response (2xx) or throws ApiError. */
export async function request(path, { method = "GET", body, admin = false, signal } = {}) {
  const key = admin ? (keys.admin || keys.api) : keys.api;
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, `the server did not answer (${exc.message})`);
  }
  if (!response.ok) {
    const err = await errorFrom(response);
    if (response.status === 401 && !admin) askForKey(err.message);
    throw err;
  }
  return response;
}

export async function json(path, options) {
  return (await request(path, options)).json();
}

/** Show `message` in a tab's error box (null hides it). */
export function showError(box, message) {
  box.hidden = !message;
  box.textContent = message || "";
}

export function describe(exc) {
  if (exc instanceof ApiError) return exc.param ? `${exc.message} (${exc.param})` : exc.message;
  return String(exc && exc.message ? exc.message : exc);
}

// -- keys ------------------------------------------------------------------------------------

function askForKey(message) {
  const banner = $("key-needed");
  banner.hidden = false;
  banner.textContent = `${message} Type the API key above.`;
  $("api-key").classList.add("wanted");
  $("api-key").focus();
}

// -- models ----------------------------------------------------------------------------------

let models = [];
const listeners = [];

/** Call `fn(models)` now and whenever the model list changes. */
export function onModels(fn) {
  listeners.push(fn);
  fn(models);
}

export async function refreshModels() {
  const data = await json("v1/models");
  $("key-needed").hidden = true;
  $("api-key").classList.remove("wanted");
  models = data.data;
  for (const fn of listeners) fn(models);
  return models;
}

/** Fill a <select> with the models that serve `family`, one <optgroup> per kind. */
export function fillPicker(select, all, family, prefer = null) {
  const usable = all.filter((m) => (m.serves || []).includes(family));
  const previous = select.value;
  select.replaceChildren();
  const kinds = [...new Set(usable.map((m) => m.kind))];
  for (const kind of kinds) {
    const group = document.createElement("optgroup");
    group.label = kind;
    for (const m of usable.filter((u) => u.kind === kind)) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.accepts && m.accepts.length ? `${m.id} (${m.accepts.join(", ")})` : m.id;
      group.append(option);
    }
    select.append(group);
  }
  if (!usable.length) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = `no model serves ${family} yet`;
    select.append(option);
  }
  const ids = usable.map((m) => m.id);
  if (ids.includes(previous)) select.value = previous;
  else if (prefer && ids.includes(prefer)) select.value = prefer;
  select.disabled = !usable.length;
  return usable;
}

export function modelById(id) {
  return models.find((m) => m.id === id) || null;
}

// -- small helpers the tabs share -------------------------------------------------------------

export function readFile(file, how = "dataURL") {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    if (how === "text") reader.readAsText(file);
    else reader.readAsDataURL(file);
  });
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

// -- tabs ------------------------------------------------------------------------------------

const TABS = ["chat", "segment", "forecast", "realtime", "adapters"];

function showTab(name) {
  if (!TABS.includes(name)) name = "chat";
  for (const tab of TABS) {
    $(`tab-${tab}`).hidden = tab !== name;
    document.querySelector(`#tabs [data-tab=${tab}]`).classList.toggle("active", tab === name);
  }
  document.body.dataset.tab = name;
}

function boot() {
  $("api-key").value = keys.api;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keys.api = $("api-key").value.trim();
    refreshModels().catch(() => {});
  });
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => { location.hash = button.dataset.tab; });
  }
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  showTab(location.hash.slice(1));
  initChat();
  initSegment();
  initForecast();
  initRealtime();
  initAdapters();
  refreshModels()
    .catch((exc) => { if (!(exc instanceof ApiError && exc.status === 401)) showError($("chat-error"), describe(exc)); })
    .finally(() => { document.body.dataset.ready = "1"; });
}

boot();
