// Segmentation: /v1/segmentations; every mask drawn over the image in its own colour, with its
// box and score. The overlay is a canvas of its own above the image (opacity in CSS), so a
// mask's pixels hold exactly its colour.

import { $, describe, el, fillPicker, onModels, readFile, request, showError } from "./app.js";
import { decodeRle } from "./rle.js";

export const PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
];

const MIN_SIDE = 512; // small images are shown enlarged (whole pixels, no smoothing)

let image = null; // {url, element}

/** Whole-number enlargement of an image so its longer side reaches MIN_SIDE. */
export function displayScale(width, height) {
  return Math.max(1, Math.floor(MIN_SIDE / Math.max(width, height)));
}

function drawImage() {
  const canvas = $("seg-image");
  const overlay = $("seg-overlay");
  const { naturalWidth: w, naturalHeight: h } = image.element;
  const scale = displayScale(w, h);
  canvas.width = overlay.width = w * scale;
  canvas.height = overlay.height = h * scale;
  overlay.dataset.scale = String(scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image.element, 0, 0, canvas.width, canvas.height);
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
}

/** Paint one segment onto the overlay: mask pixels, box outline, "phrase score" label. */
export function paintSegment(ctx, segment, colour) {
  const [h, w] = segment.mask.size;
  const mask = decodeRle(segment.mask);
  const layer = new ImageData(w, h);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    layer.data.set([colour[0], colour[1], colour[2], 255], 4 * i);
  }
  const sx = ctx.canvas.width / w;
  const sy = ctx.canvas.height / h;
  const off = new OffscreenCanvas(w, h);
  off.getContext("2d").putImageData(layer, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, ctx.canvas.width, ctx.canvas.height); // mask pixels -> display pixels
  const css = `rgb(${colour.join(",")})`;
  const [x0, y0, x1, y1] = segment.box;
  ctx.strokeStyle = css;
  ctx.lineWidth = 2;
  ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  const label = `${segment.phrase} ${segment.score.toFixed(2)}`;
  const size = 14;
  ctx.font = `${size}px sans-serif`;
  const tw = ctx.measureText(label).width + 6;
  const ly = Math.max(0, y0 * sy - size - 4);
  ctx.fillStyle = css;
  ctx.fillRect(x0 * sx, ly, tw, size + 4);
  ctx.fillStyle = "#fff";
  ctx.fillText(label, x0 * sx + 3, ly + size);
  return mask;
}

function swatch(colour) {
  const node = el("span", { class: "swatch" });
  node.style.background = `rgb(${colour.join(",")})`; // CSSOM: the page's policy allows no inline style
  return node;
}

async function run() {
  showError($("seg-error"), null);
  if (!image) return showError($("seg-error"), "choose an image first");
  const text = $("seg-text").value.trim();
  const mode = $("seg-mode").value;
  const body = { model: $("seg-model").value, image: image.url, mask_format: "rle" };
  if ($("seg-refine").checked) body.refine = true;
  if (mode === "prompt") body.prompt = text;
  else body.phrases = text.split(/[,;\n]/).map((p) => p.trim()).filter(Boolean);
  $("seg-run").disabled = true;
  try {
    const out = await (await request("v1/segmentations", { method: "POST", body })).json();
    drawImage();
    const ctx = $("seg-overlay").getContext("2d");
    const legend = $("seg-legend");
    legend.replaceChildren();
    out.segments.forEach((segment, i) => {
      const colour = PALETTE[i % PALETTE.length];
      paintSegment(ctx, segment, colour);
      legend.append(el("li", { dataset: { colour: colour.join(","), phrase: segment.phrase } },
        swatch(colour),
        `${segment.phrase} — score ${segment.score.toFixed(3)}, box [${segment.box.map((v) => Math.round(v)).join(", ")}]`));
    });
    if (!out.segments.length) legend.append(el("li", {}, "no segments"));
    $("seg-answer").hidden = out.answer == null;
    $("seg-answer").textContent = out.answer || "";
    $("seg-overlay").dataset.segments = String(out.segments.length);
  } catch (exc) {
    showError($("seg-error"), describe(exc));
  } finally {
    $("seg-run").disabled = false;
  }
}

export function initSegment() {
  onModels((models) => fillPicker($("seg-model"), models, "segmentations"));
  $("seg-mode").addEventListener("change", () => {
    $("seg-text").placeholder = $("seg-mode").value === "prompt" ? "a question about the image" : "phrases, comma-separated";
  });
  $("seg-file").addEventListener("change", async () => {
    const file = $("seg-file").files[0];
    if (!file) return;
    const url = await readFile(file);
    const element = new Image();
    element.onload = () => { image = { url, element }; drawImage(); $("seg-legend").replaceChildren(); };
    element.onerror = () => showError($("seg-error"), `${file.name}: the browser cannot decode this image`);
    element.src = url;
  });
  $("seg-form").addEventListener("submit", (event) => { event.preventDefault(); run(); });
}
