// Adapters: list, register from an allowed root, remove (/v1/adapters, the admin key).

import { $, ApiError, describe, el, json, keys, refreshModels, showError } from "./app.js";

function summary(details) {
  if (!details || typeof details !== "object") return "";
  return Object.entries(details)
    .filter(([, v]) => v !== null && typeof v !== "object")
    .slice(0, 6).map(([k, v]) => `${k}=${v}`).join(" ");
}

function problem(exc) {
  if (exc instanceof ApiError && (exc.status === 401 || exc.status === 403)) {
    $("ad-admin-key").classList.add("wanted");
    return `${exc.message} Type the admin key above.`;
  }
  return describe(exc);
}

export async function listAdapters(clear = true) {
  if (clear) showError($("ad-error"), null);
  try {
    const data = await json("v1/adapters", { admin: true });
    $("ad-admin-key").classList.remove("wanted");
    const rows = data.data.map((a) => {
      const remove = el("button", { type: "button", class: "remove", dataset: { name: a.id } }, "Remove");
      remove.addEventListener("click", () => removeAdapter(a.id, remove));
      return el("tr", { dataset: { name: a.id, state: a.state } },
        el("td", {}, a.id), el("td", {}, a.kind), el("td", {}, a.state), el("td", {}, el("code", {}, a.version)),
        el("td", { class: "hint" }, a.error || summary(a.details)), el("td", {}, remove));
    });
    $("ad-list").replaceChildren(...rows);
    if (!rows.length) $("ad-list").append(el("tr", {}, el("td", { colspan: "6", class: "hint" }, "no adapters registered")));
  } catch (exc) {
    $("ad-list").replaceChildren();
    showError($("ad-error"), problem(exc));
  }
}

async function removeAdapter(name, button) {
  button.disabled = true;
  $("ad-status").textContent = `removing ${name} (in-flight requests finish first)`;
  try {
    const out = await json(`v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
    $("ad-status").textContent = `removed ${out.id} (${out.state})`;
  } catch (exc) {
    showError($("ad-error"), problem(exc));
    $("ad-status").textContent = "";
  }
  await listAdapters(false);
  refreshModels().catch(() => {});
}

async function register() {
  showError($("ad-error"), null);
  const name = $("ad-name").value.trim();
  const source = $("ad-source").value.trim();
  $("ad-add").disabled = true;
  $("ad-status").textContent = `registering ${name} (the server loads it into an engine first)`;
  try {
    const out = await json("v1/adapters", { method: "POST", body: { name, source }, admin: true });
    $("ad-status").textContent = `registered ${out.id}: ${out.kind}, ${out.state}, version ${out.version}`;
    $("ad-name").value = "";
    $("ad-source").value = "";
  } catch (exc) {
    $("ad-status").textContent = "";
    showError($("ad-error"), problem(exc));
  } finally {
    $("ad-add").disabled = false;
  }
  await listAdapters(false);
  refreshModels().catch(() => {});
}

export function initAdapters() {
  $("ad-admin-key").value = keys.admin;
  $("ad-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keys.admin = $("ad-admin-key").value.trim();
    listAdapters();
  });
  $("ad-refresh").addEventListener("click", () => listAdapters());
  $("ad-form").addEventListener("submit", (event) => { event.preventDefault(); register(); });
  window.addEventListener("hashchange", () => { if (location.hash === "#adapters") listAdapters(); });
  if (location.hash === "#adapters") listAdapters();
}
