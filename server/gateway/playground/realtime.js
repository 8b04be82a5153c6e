// Realtime: the microphone -> 24 kHz PCM16 -> /v1/realtime (OpenAI Realtime GA events); the
// answer's audio is played as its deltas arrive, its transcript shown; speech during an answer
// (the server VAD's speech_started) or the Interrupt button cuts the playback (barge-in).
//
// Browsers cannot set headers on a websocket, so a key travels as the subprotocol
// `openai-insecure-api-key.<key>` next to `realtime`, as OpenAI's browser SDK sends it.

import { $, apiUrl, describe, el, fillPicker, keys, onModels, showError } from "./app.js";
import { Resampler, base64ToBytes, bytesToBase64, decodePcm, encodePcm } from "./audio.js";

export const RATE = 24000;
const SEND_SAMPLES = RATE / 10; // one append per 100 ms

let ws = null;
let mic = null;      // {stream, context, node, resampler, pending: Float32Array[]}
let player = null;   // {context, chunks: [{source, start, duration}], next, item}
const counts = { sentBytes: 0, audioBytes: 0, deltas: 0, responses: 0, interrupted: 0 };
let assistantLine = null;
let activeResponse = null; // id of the response being generated, if any

function status(text) { $("rt-status").textContent = text; }

function showCounts() {
  const box = $("rt-counts");
  Object.entries(counts).forEach(([k, v]) => { box.dataset[k] = String(v); });
  box.textContent = `sent ${(counts.sentBytes / 2 / RATE).toFixed(1)} s · received ${(counts.audioBytes / 2 / RATE).toFixed(1)} s in ${counts.deltas} deltas · ${counts.responses} answers`;
}

function logEvent(event) {
  const list = $("rt-events");
  const text = event.type + (event.type === "error" ? `: ${event.error && event.error.message}` : "");
  list.prepend(el("li", { class: event.type === "error" ? "error" : "" }, text));
  while (list.children.length > 200) list.lastChild.remove();
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

function sessionUpdate() {
  const vad = $("rt-turns").value === "server_vad"
    ? { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500,
        create_response: true, interrupt_response: true }
    : null;
  const format = { type: "audio/pcm", rate: RATE };
  const session = { type: "realtime", output_modalities: ["audio"],
    audio: { input: { format, turn_detection: vad }, output: { format } } };
  const limit = Number($("rt-max-tokens").value);
  session.max_output_tokens = limit > 0 ? limit : "inf";
  send({ type: "session.update", session });
  $("rt-commit").disabled = vad !== null;
}

// -- playback ----------------------------------------------------------------------------------

function ensurePlayer() {
  // NOTE: made in the microphone click, so the browser's autoplay policy lets it sound
  if (!player) player = { context: new AudioContext(), chunks: [], next: 0, item: null };
  if (player.context.state === "suspended") player.context.resume();
  return player;
}

function play(itemId, samples) {
  const { context } = ensurePlayer();
  if (player.item !== itemId) {
    player.item = itemId;
    player.chunks = [];
  }
  const buffer = context.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  const start = Math.max(context.currentTime + 0.02, player.next);
  source.start(start);
  player.next = start + buffer.duration;
  player.chunks.push({ source, start, duration: buffer.duration });
  $("rt-interrupt").disabled = false;
}

/** Milliseconds of the current item's audio that have actually been heard. */
function playedMs() {
  if (!player) return 0;
  const now = player.context.currentTime;
  return Math.round(1000 * player.chunks.reduce((sum, c) => sum + Math.min(c.duration, Math.max(0, now - c.start)), 0));
}

function playing() {
  return Boolean(player && player.next > player.context.currentTime);
}

/** Barge-in: stop what is playing and tell the server how much of the item was heard. */
function cutPlayback(reason) {
  if (!player || !player.chunks.length) return;
  const heard = playedMs();
  const wasPlaying = playing();
  for (const c of player.chunks) {
    try { c.source.stop(); } catch { /* not started */ }
  }
  if (player.item && wasPlaying) {
    send({ type: "conversation.item.truncate", item_id: player.item, content_index: 0, audio_end_ms: heard });
  }
  player.chunks = [];
  player.next = 0;
  counts.interrupted += 1;
  showCounts();
  if (assistantLine) assistantLine.append(el("span", { class: "hint" }, ` [${reason} at ${heard} ms]`));
}

// -- events ------------------------------------------------------------------------------------

function onEvent(event) {
  logEvent(event);
  switch (event.type) {
    case "session.created":
      status(`session ${event.session && event.session.id ? event.session.id : ""} open`);
      sessionUpdate();
      break;
    case "session.updated":
      status("listening");
      break;
    case "input_audio_buffer.speech_started":
      if (playing()) cutPlayback("barge-in");
      status("hearing you");
      break;
    case "input_audio_buffer.speech_stopped":
      status("thinking");
      break;
    case "input_audio_buffer.committed":
      $("rt-transcript").append(el("div", { class: "msg user" }, el("div", { class: "role" }, "you"), el("div", { class: "text" }, "(spoken turn)")));
      break;
    case "conversation.item.input_audio_transcription.completed":
      $("rt-transcript").lastChild && ($("rt-transcript").lastChild.querySelector(".text").textContent = event.transcript);
      break;
    case "response.created":
      activeResponse = event.response && event.response.id;
      assistantLine = el("div", { class: "text" });
      $("rt-transcript").append(el("div", { class: "msg assistant" }, el("div", { class: "role" }, "assistant"), assistantLine));
      status("answering");
      break;
    case "response.output_audio.delta": {
      const bytes = base64ToBytes(event.delta);
      counts.audioBytes += bytes.length;
      counts.deltas += 1;
      showCounts();
      play(event.item_id, decodePcm(bytes));
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (assistantLine) assistantLine.textContent += event.delta;
      break;
    case "response.done":
      activeResponse = null;
      counts.responses += 1;
      showCounts();
      if (assistantLine && event.response && event.response.status !== "completed") {
        assistantLine.append(el("span", { class: "hint" }, ` [${event.response.status}]`));
      }
      status("listening");
      break;
    case "error":
      showError($("rt-error"), (event.error && event.error.message) || JSON.stringify(event));
      break;
    default:
      break;
  }
}

function connect() {
  return new Promise((resolve, reject) => {
    const url = new URL(apiUrl(`v1/realtime?model=${encodeURIComponent($("rt-model").value)}`));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const protocols = keys.api ? ["realtime", `openai-insecure-api-key.${keys.api}`] : [];
    ws = new WebSocket(url, protocols);
    status("connecting");
    ws.onopen = () => { $("rt-hangup").disabled = false; resolve(); };
    ws.onmessage = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      onEvent(event);
    };
    ws.onerror = () => reject(new Error("the realtime websocket could not be opened"));
    ws.onclose = (close) => {
      if (close.code !== 1000 && close.code !== 1005) {
        showError($("rt-error"), `the session closed: ${close.code} ${close.reason || ""}`.trim());
      }
      ws = null;
      stopMic();
      status("not connected");
      $("rt-hangup").disabled = true;
    };
  });
}

// -- microphone ----------------------------------------------------------------------------------

async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "floe-capture");
  const mute = context.createGain();
  mute.gain.value = 0; // keeps the worklet pulled without echoing the mic
  source.connect(node).connect(mute).connect(context.destination);
  const capture = { stream, context, node, resampler: new Resampler(context.sampleRate, RATE), pending: [], size: 0 };
  mic = capture;
  node.port.onmessage = ({ data }) => {
    if (mic !== capture) return; // a block posted after the microphone stopped
    let energy = 0;
    for (const v of data) energy += v * v;
    $("rt-level").value = Math.min(1, 4 * Math.sqrt(energy / data.length));
    const out = capture.resampler.push(data);
    capture.pending.push(out);
    capture.size += out.length;
    if (capture.size >= SEND_SAMPLES) {
      const all = new Float32Array(capture.size);
      let at = 0;
      for (const part of capture.pending) { all.set(part, at); at += part.length; }
      capture.pending = [];
      capture.size = 0;
      const bytes = encodePcm(all);
      send({ type: "input_audio_buffer.append", audio: bytesToBase64(bytes) });
      counts.sentBytes += bytes.length;
      showCounts();
    }
  };
  $("rt-mic").setAttribute("aria-pressed", "true");
  $("rt-mic").textContent = "■ Stop microphone";
}

function stopMic() {
  if (!mic) return;
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.context.close();
  mic = null;
  $("rt-level").value = 0;
  $("rt-mic").setAttribute("aria-pressed", "false");
  $("rt-mic").textContent = "● Microphone";
}

async function toggleMic() {
  showError($("rt-error"), null);
  if (mic) return stopMic();
  ensurePlayer();
  try {
    if (!ws) await connect();
    await startMic();
  } catch (exc) {
    showError($("rt-error"), describe(exc));
  }
}

export function initRealtime() {
  onModels((models) => {
    const usable = fillPicker($("rt-model"), models, "realtime");
    $("rt-mic").disabled = !usable.length;
  });
  showCounts();
  $("rt-mic").addEventListener("click", toggleMic);
  $("rt-turns").addEventListener("change", sessionUpdate);
  $("rt-max-tokens").addEventListener("change", sessionUpdate);
  $("rt-commit").addEventListener("click", () => {
    send({ type: "input_audio_buffer.commit" });
    send({ type: "response.create" });
  });
  $("rt-interrupt").addEventListener("click", () => {
    if (activeResponse) send({ type: "response.cancel", response_id: activeResponse });
    cutPlayback("interrupted");
  });
  $("rt-hangup").addEventListener("click", () => { stopMic(); if (ws) ws.close(1000); });
}
