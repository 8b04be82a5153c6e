// Chat: /v1/chat/completions streamed as server-sent events; image / audio parts; tools.

import { $, describe, el, fillPicker, modelById, onModels, readFile, request, showError } from "./app.js";

const EXAMPLE_TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city.",
    parameters: {
      type: "object", additionalProperties: false, required: ["city"],
      properties: { city: { type: "string", enum: ["Paris", "Oslo"] } },
    },
  },
}];

let history = [];      // the OpenAI messages sent so far
let attachment = null; // {part, label}
let controller = null; // AbortController of the answer streaming now

/** Server-sent events from a fetch Response: yields each `data:` payload. */
export async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n");
    }
    if (done) return;
  }
}

/** The content part for a file: `image_url` (a data URL) or `input_audio` (WAV / MP3, base64). */
export async function mediaPart(file) {
  const url = await readFile(file);
  if (file.type.startsWith("image/")) return { type: "image_url", image_url: { url } };
  const name = file.name.toLowerCase();
  const format = /wav/.test(file.type) || name.endsWith(".wav") ? "wav"
    : /mpeg|mp3/.test(file.type) || name.endsWith(".mp3") ? "mp3" : null;
  if (!format) throw new Error(`${file.name}: attach an image, or audio as WAV or MP3`);
  return { type: "input_audio", input_audio: { data: url.slice(url.indexOf(",") + 1), format } };
}

function bubble(role, text = "") {
  const body = el("div", { class: "text" }, text);
  const node = el("div", { class: `msg ${role}` }, el("div", { class: "role" }, role), body);
  $("chat-log").append(node);
  node.scrollIntoView({ block: "end" });
  return { node, body };
}

function toolsFromEditor() {
  if (!$("chat-tools-on").checked) return null;
  let tools;
  try {
    tools = JSON.parse($("chat-tools").value);
  } catch (exc) {
    throw new Error(`tool definitions: not JSON (${exc.message})`);
  }
  if (!Array.isArray(tools)) throw new Error("tool definitions: a JSON array of {\"type\": \"function\", ...}");
  return tools;
}

function showCalls(node, calls) {
  for (const call of calls) {
    let args = call.function.arguments;
    try { args = JSON.stringify(JSON.parse(args), null, 1); } catch { /* shown as sent */ }
    node.append(el("div", { class: "tool-call", dataset: { name: call.function.name } },
      el("code", {}, `${call.function.name}(`), el("pre", {}, args), el("code", {}, ")"), el("span", { class: "hint" }, ` id ${call.id}`)));
  }
}

async function send(text) {
  showError($("chat-error"), null);
  showError($("chat-tools-error"), null);
  const model = $("chat-model").value;
  let tools;
  try {
    tools = toolsFromEditor();
  } catch (exc) {
    showError($("chat-tools-error"), exc.message);
    return;
  }
  const content = attachment ? [attachment.part, { type: "text", text }] : text;
  const user = { role: "user", content };
  const body = {
    model, stream: true, messages: [...history, user],
    max_tokens: Number($("chat-max-tokens").value) || undefined,
    temperature: Number($("chat-temperature").value),
  };
  if (tools) {
    body.tools = tools;
    body.tool_choice = $("chat-tool-choice").value;
    if ($("chat-one-call").checked) body.parallel_tool_calls = false;
  }
  const shown = bubble("user", text);
  if (attachment) shown.node.append(el("div", { class: "hint" }, `+ ${attachment.label}`));
  const answer = bubble("assistant");
  answer.node.classList.add("streaming");
  controller = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  let textOut = "";
  let chunks = 0;
  const calls = [];
  let finish = null;
  try {
    const response = await request("v1/chat/completions", { method: "POST", body, signal: controller.signal });
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const frame = JSON.parse(data);
      if (frame.error) throw new Error(frame.error.message || JSON.stringify(frame.error));
      const choice = frame.choices && frame.choices[0];
      if (!choice) continue;
      chunks += 1;
      const delta = choice.delta || {};
      if (delta.content) {
        textOut += delta.content;
        answer.body.textContent = textOut;
      }
      for (const piece of delta.tool_calls || []) {
        const call = calls[piece.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
        if (piece.id) call.id = piece.id;
        if (piece.function && piece.function.name) call.function.name += piece.function.name;
        if (piece.function && piece.function.arguments) call.function.arguments += piece.function.arguments;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      answer.node.dataset.chunks = String(chunks);
    }
    history.push(user);
    const said = { role: "assistant", content: textOut || null };
    if (calls.length) said.tool_calls = calls;
    history.push(said);
    showCalls(answer.node, calls);
    answer.node.append(el("div", { class: "hint finish" }, `finish_reason: ${finish}`));
    clearAttachment();
  } catch (exc) {
    if (exc.name === "AbortError") {
      answer.node.append(el("div", { class: "hint finish" }, "stopped"));
    } else {
      answer.node.classList.add("failed");
      showError($("chat-error"), describe(exc));
    }
  } finally {
    answer.node.classList.remove("streaming");
    answer.node.dataset.done = "1";
    controller = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

function clearAttachment() {
  attachment = null;
  $("chat-file").value = "";
  $("chat-attachment").textContent = "";
}

function onModel() {
  const model = modelById($("chat-model").value);
  const accepts = (model && model.accepts) || [];
  const types = [];
  if (accepts.includes("image_url")) types.push("image/*");
  if (accepts.includes("input_audio")) types.push(".wav,.mp3,audio/wav,audio/mpeg");
  $("chat-file").accept = types.join(",");
  $("chat-file").disabled = !types.length;
  $("chat-file").parentElement.title = types.length ? "" : "this model takes text only";
  if (!types.length) clearAttachment();
}

export function initChat() {
  $("chat-tools").value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
  onModels((models) => { fillPicker($("chat-model"), models, "chat"); onModel(); });
  $("chat-model").addEventListener("change", onModel);
  $("chat-file").addEventListener("change", async () => {
    const file = $("chat-file").files[0];
    if (!file) return clearAttachment();
    try {
      attachment = { part: await mediaPart(file), label: `${file.name} (${Math.round(file.size / 1024)} KiB)` };
      $("chat-attachment").textContent = attachment.label;
      showError($("chat-error"), null);
    } catch (exc) {
      clearAttachment();
      showError($("chat-error"), describe(exc));
    }
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || controller) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => controller && controller.abort());
  $("chat-clear").addEventListener("click", () => {
    history = [];
    $("chat-log").replaceChildren();
    clearAttachment();
    showError($("chat-error"), null);
  });
}
