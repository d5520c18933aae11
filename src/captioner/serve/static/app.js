// The captioner page: pick, drop or paste an image → POST /v1/captions → caption, n-best
// list and, for attention decoders, a per-word heat map drawn on a canvas over the image.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  model: null,   // /v1/models "models"[0]
  limits: null,  // /v1/models "limits"
  result: null,  // the last result shown
  word: 0,       // the selected word of the attention view
  busy: false,
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message || "";
}

async function loadModelInfo() {
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    state.model = body.models[0];
    state.limits = body.limits;
    const m = state.model;
    $("model-info").textContent =
      `Model ${m.id}: ${m.encoder} + ${m.decoder}` + (m.has_attention ? ", with attention" : "");
    const maxBeam = state.limits.max_beam_size;
    $("beam-size").max = maxBeam;
    $("n-best").max = maxBeam;
    showLanguages(m.languages || []);
    const mb = (state.limits.max_upload_bytes / 1048576).toFixed(0);
    $("limits").textContent = `${state.limits.formats.join(", ")} · up to ${mb} MB`;
  } catch (err) {
    $("model-info").textContent = "Model information unavailable";
    showError(`Could not reach the server: ${err.message}`);
  }
}

// A multilingual model's languages, named in the page's language where the browser knows them.
function showLanguages(languages) {
  const select = $("language");
  select.replaceChildren();
  let names = null;
  try {
    names = new Intl.DisplayNames([document.documentElement.lang || "en"], { type: "language" });
  } catch (_) { /* an old browser: the codes alone */ }
  for (const code of languages) {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = names ? `${names.of(code)} (${code})` : code;
    select.append(option);
  }
  $("language-field").hidden = languages.length < 2;
}

function readOptions() {
  const beam = Math.max(1, parseInt($("beam-size").value, 10) || 1);
  const nBest = Math.min(beam, Math.max(1, parseInt($("n-best").value, 10) || 1));
  return { beam, nBest };
}

async function captionFile(file) {
  if (!file || state.busy) return;
  showError("");
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ` +
              `${(state.limits.max_upload_bytes / 1048576).toFixed(0)} MB.`);
    return;
  }
  const { beam, nBest } = readOptions();
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("beam_size", String(beam));
  form.append("n_best", String(nBest));
  form.append("attention", state.model && state.model.has_attention ? "true" : "false");
  if (!$("language-field").hidden) form.append("language", $("language").value);

  state.busy = true;
  $("file-input").disabled = true;
  setStatus(`Captioning ${file.name}…`);
  try {
    const response = await fetch("/v1/captions", { method: "POST", body: form });
    let body;
    try {
      body = await response.json();
    } catch (_) {
      throw new Error(`the server answered ${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
    await showImage(file);
    render(body.results[0], body.language);
    setStatus(`Captioned in ${Math.round(body.elapsed_ms)} ms`);
  } catch (err) {
    $("result").hidden = true;
    setStatus("");
    showError(err.message);
  } finally {
    state.busy = false;
    $("file-input").disabled = false;
  }
}

function showImage(file) {
  const img = $("preview");
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  const url = URL.createObjectURL(file);
  img.dataset.url = url;
  return new Promise((resolve) => {
    img.onload = () => resolve();
    img.onerror = () => resolve(); // the browser may not display every format the server reads
    img.src = url;
    img.alt = file.name;
  });
}

function formatScore(score) {
  return score === null || score === undefined ? "–" : score.toFixed(3);
}

// What the model was trained on, as its confidence file names it ("emoji art").
function modelDomain() {
  const confidence = state.model && state.model.confidence;
  return (confidence && confidence.domain) || "the images it was trained on";
}

// Shows one result of /v1/captions (written in ``language``: its script's direction follows
// from the text, dir="auto"); also the hook the page's browser test calls directly.
function render(result, language) {
  state.result = result;
  state.word = 0;
  $("result").hidden = false;
  for (const id of ["caption", "alternatives", "words"]) $(id).lang = language || "";
  $("caption").textContent = result.caption || "(empty caption)";
  const confidence = typeof result.confidence === "number" ? ` · confidence ${result.confidence.toFixed(3)}` : "";
  $("score").textContent = `score ${formatScore(result.score)} (log-probability)${confidence}`;
  const notice = $("low-confidence");
  notice.hidden = !result.low_confidence;
  notice.textContent = result.low_confidence ? `low confidence — this model knows ${modelDomain()}` : "";

  const list = $("alternatives");
  list.replaceChildren();
  for (const alt of result.alternatives || []) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "alt-caption";
    text.dir = "auto";
    text.textContent = alt.caption;
    const score = document.createElement("span");
    score.className = "alt-score";
    score.textContent = formatScore(alt.score);
    item.append(text, score);
    list.append(item);
  }
  $("alternatives-box").hidden = (result.alternatives || []).length < 2;

  const words = $("words");
  words.replaceChildren();
  const attention = result.attention;
  const usable = attention && attention.grid && attention.weights && attention.weights.length;
  $("attention").hidden = !usable;
  if (usable) {
    attention.words.forEach((word, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = word;
      button.setAttribute("aria-pressed", String(i === 0));
      button.addEventListener("click", () => selectWord(i));
      button.addEventListener("mouseenter", () => selectWord(i));
      words.append(button);
    });
  }
  drawOverlay();
}

function selectWord(i) {
  state.word = i;
  $("words").querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(j === i)));
  drawOverlay();
}

// The part of the original image the encoder saw (resize + center crop), in image pixels.
function encoderRegion(width, height) {
  const p = state.model && state.model.preprocess;
  if (!p || p.resize === "squash") return { x: 0, y: 0, w: width, h: height };
  const scale = p.resize_size / Math.min(width, height);
  const side = p.crop_size / scale;
  const w = Math.min(width, side);
  const h = Math.min(height, side);
  return { x: (width - w) / 2, y: (height - h) / 2, w, h };
}

// Weight → RGBA on a transparent-to-red "heat" ramp.
function heatColor(t) {
  const r = 255;
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.6 - 1.6 * t)));
  const b = Math.round(60 * (1 - t));
  const a = Math.round(255 * (0.08 + 0.62 * t));
  return [r, g, b, a];
}

function drawOverlay() {
  const img = $("preview");
  const canvas = $("overlay");
  const shownWidth = img.clientWidth;
  const shownHeight = img.clientHeight;
  const ratio = window.devicePixelRatio || 1;
  canvas.style.width = `${shownWidth}px`;
  canvas.style.height = `${shownHeight}px`;
  canvas.width = Math.max(1, Math.round(shownWidth * ratio));
  canvas.height = Math.max(1, Math.round(shownHeight * ratio));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);

  const attention = state.result && state.result.attention;
  if (!attention || !attention.grid || !img.naturalWidth) {
    canvas.dataset.drawn = "false";
    return;
  }
  const [rows, cols] = attention.grid;
  const weights = attention.weights[state.word] || [];
  const peak = Math.max(...weights, 1e-12);
  const cells = new ImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    cells.data.set(heatColor((weights[i] || 0) / peak), i * 4);
  }
  const grid = document.createElement("canvas");
  grid.width = cols;
  grid.height = rows;
  grid.getContext("2d").putImageData(cells, 0, 0);

  const region = encoderRegion(img.naturalWidth, img.naturalHeight);
  const sx = canvas.width / img.naturalWidth;
  const sy = canvas.height / img.naturalHeight;
  ctx.imageSmoothingEnabled = true; // bilinear upsampling turns cells into a smooth heat map
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(grid, region.x * sx, region.y * sy, region.w * sx, region.h * sy);
  canvas.dataset.drawn = "true";
  canvas.dataset.word = String(state.word);
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => captionFile(input.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) captionFile(files[0]);
  });
  // A file dropped outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  window.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    const image = items.find((f) => f.type.startsWith("image/"));
    if (image) captionFile(image);
  });
  new ResizeObserver(drawOverlay).observe($("preview"));
}

window.captionerPage = { render, selectWord, showError, state };

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  loadModelInfo();
});
