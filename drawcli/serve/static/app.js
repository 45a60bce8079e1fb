// The page of `draw serve`: plain JavaScript, no build step, no outside requests.
// Every picture comes from the JSON API (/api/...) as base64 uint8 bytes with a shape; a film holds
// all T canvases of one picture, so scrubbing and playing need no request per glimpse.
"use strict";

const $ = (id) => document.getElementById(id);
const READ = "#00ff00";
const WRITE = "#ff0000";
const state = { model: null, info: null, grid: null, picked: -1, drawn: false, limits: null };

// ------------------------------------------------------------------ requests
let busy = 0;
function setBusy(delta) {
  busy += delta;
  document.body.dataset.busy = String(busy);
}

function say(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function api(path, body) {
  setBusy(1);
  try {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  } finally {
    setBusy(-1);
  }
}

// Each kind of request has a counter: an answer that arrives after a newer request of its kind
// (another model, another seed) is dropped.
const latest = {};
async function fresh(kind, path, body) {
  const ticket = (latest[kind] = (latest[kind] || 0) + 1);
  const data = await api(path, body);
  return ticket === latest[kind] ? data : null;
}

function failed(error) {
  say(error.message, true);
}

// ------------------------------------------------------------------ pictures
function bytes(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// One picture (C, H, W) at ``offset`` of ``data`` as ImageData: grey or RGB.
function imageData(data, offset, c, h, w) {
  const img = new ImageData(w, h);
  const plane = h * w;
  for (let p = 0; p < plane; p++) {
    const q = 4 * p;
    if (c === 1) {
      const v = data[offset + p];
      img.data[q] = v; img.data[q + 1] = v; img.data[q + 2] = v;
    } else {
      img.data[q] = data[offset + p];
      img.data[q + 1] = data[offset + plane + p];
      img.data[q + 2] = data[offset + 2 * plane + p];
    }
    img.data[q + 3] = 255;
  }
  return img;
}

// Draw a picture on a canvas, scaled up with square pixels.
function paint(canvas, data, offset, c, h, w) {
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  small.getContext("2d").putImageData(imageData(data, offset, c, h, w), 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function fitCanvas(canvas, h, w, side) {
  const scale = Math.max(1, Math.floor(side / Math.max(h, w)));
  canvas.width = w * scale; canvas.height = h * scale;
  return scale;
}

// An attention window: the N x N grid of filter centres around (g_x, g_y), N * delta wide, in the
// paper's 1-based pixels (as drawcli/pictures/frames.py draws them in the GIFs).
function drawWindow(ctx, params, n, scale, colour) {
  const [gx, gy, delta] = params;
  const half = (n * delta) / 2;
  const x0 = (gx - 0.5 - half) * scale, y0 = (gy - 0.5 - half) * scale;
  const side = Math.max(1, 2 * half * scale);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#000";
  ctx.strokeRect(x0 - 1, y0 - 1, side + 2, side + 2);
  ctx.strokeStyle = colour;
  ctx.strokeRect(x0, y0, side, side);
}

// ------------------------------------------------------------------ the glimpse player
class Player {
  constructor(canvas, scrub, button, label, boxes) {
    Object.assign(this, { canvas, scrub, button, label, boxes, film: null, timer: null });
    scrub.addEventListener("input", () => { this.pause(); this.show(Number(scrub.value)); });
    button.addEventListener("click", () => (this.timer ? this.pause() : this.play()));
    boxes.addEventListener("change", () => this.show(Number(scrub.value)));
  }

  // film: {frames: Uint8Array (T, C, H, W), shape, read, write, readN, writeN, key}
  load(film) {
    this.pause();
    this.film = film;
    const [t, , h, w] = film.shape;
    this.scale = fitCanvas(this.canvas, h, w, 280);
    this.scrub.max = String(t);
    this.canvas.dataset.key = film.key;
    this.show(t);
  }

  clear() {
    this.pause();
    this.film = null;
    this.canvas.getContext("2d").clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.scrub.max = "1"; this.scrub.value = "1";
    this.label.textContent = "glimpse 0 / 0";
    delete this.canvas.dataset.key;
    delete this.canvas.dataset.glimpse;
  }

  show(t) {
    const film = this.film;
    if (!film) return;
    const [steps, c, h, w] = film.shape;
    t = Math.min(Math.max(1, t), steps);
    this.scrub.value = String(t);
    paint(this.canvas, film.frames, (t - 1) * c * h * w, c, h, w);
    if (this.boxes.checked) {
      const ctx = this.canvas.getContext("2d");
      if (film.read) drawWindow(ctx, film.read[t - 1], film.readN, this.scale, READ);
      if (film.write) drawWindow(ctx, film.write[t - 1], film.writeN, this.scale, WRITE);
    }
    this.label.textContent = `glimpse ${t} / ${steps}`;
    this.canvas.dataset.glimpse = String(t);
  }

  play() {
    if (!this.film) return;
    const steps = this.film.shape[0];
    if (Number(this.scrub.value) >= steps) this.show(1);
    this.button.textContent = "Pause";
    this.button.dataset.playing = "1";
    this.timer = setInterval(() => {
      const t = Number(this.scrub.value) + 1;
      if (t > steps) { this.pause(); return; }
      this.show(t);
    }, 1000 / 15);
  }

  pause() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.button.textContent = "Play";
    this.button.dataset.playing = "0";
  }
}

// ------------------------------------------------------------------ the model and its card
function settingsText(s) {
  if (!s || s.glimpses == null) return null;
  const parts = [`T = ${s.glimpses} glimpses`, `LSTM ${s.hidden}`, `z ${s.latent}`];
  parts.push(s.attention === false ? "no attention" : `read ${s.read_n}×${s.read_n}, write ${s.write_n}×${s.write_n}`);
  return parts.join(", ");
}

function showCard() {
  const entry = state.models.find((m) => m.id === state.model);
  const info = state.info;
  const rows = [["model", entry.id], ["about", entry.description], ["data set", entry.dataset],
    ["settings", settingsText(entry.settings)]];
  const shape = info ? info.shape : entry.shape;
  if (shape) rows.push(["pictures", `${shape[0] === 3 ? "colour" : "grey"}, ${shape[2]}×${shape[1]}`]);
  if (entry.trained) rows.push(["trained", entry.trained]);
  rows.push(["test ELBO", entry.test_elbo != null ? `${entry.test_elbo.toFixed(2)} nats` : "not measured"]);
  for (const [key, value] of Object.entries(entry.results || {})) {
    if (!key.startsWith("test ELBO (all")) rows.push([key, typeof value === "number" ? `${value.toFixed(2)} nats` : String(value)]);
  }
  if (info) rows.push(["running", `${entry.kind === "run" ? `checkpoint of epoch ${info.epoch}, ` : ""}${info.engine} engine on ${info.device}`]);
  const card = $("card");
  card.replaceChildren();
  for (const [key, value] of rows) {
    if (value == null) continue;
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = value;
    card.append(dt, dd);
  }
  card.dataset.model = entry.id;
}

function learn(info) {
  const first = !state.info || state.info.id !== info.id;
  state.info = info;
  if (first) {
    showCard();
    const colour = info.shape[0] === 3;
    $("ink-label").hidden = !colour;
    $("read-caption").textContent = info.binarize === "none" ? "what it read" : `what it read (binarised: ${info.binarize})`;
    if (!state.drawn) clearPad();
  }
}

async function pickModel(id) {
  state.model = id;
  state.info = null;
  state.picked = -1;
  showCard();
  player.clear();
  recon.clear();
  clearSeen();
  $("elbo").textContent = "";
  $("walk-row").replaceChildren();
  delete $("walk-row").dataset.key;
  say(`loading ${id}…`);
  await sampleGrid();
  if (state.drawn) reconstruct();
}

// ------------------------------------------------------------------ samples
function gridParams() {
  return { model: state.model, n: Number($("count").value), seed: Number($("seed").value) };
}

async function sampleGrid() {
  const params = gridParams();
  say(`sampling ${params.n} from ${params.model}…`);
  try {
    const data = await fresh("grid", "/api/sample", params);
    if (!data) return;
    learn(data.model);
    const [n, c, h, w] = data.shape;
    const pixels = bytes(data.images);
    const grid = $("grid");
    grid.replaceChildren();
    for (let i = 0; i < n; i++) {
      const cell = document.createElement("canvas");
      fitCanvas(cell, h, w, n > 64 ? 28 : 56);
      paint(cell, pixels, i * c * h * w, c, h, w);
      cell.title = `sample ${i}`;
      cell.dataset.index = String(i);
      cell.addEventListener("click", () => openSample(i));
      grid.append(cell);
    }
    state.grid = { ...params, n };
    grid.dataset.key = `${params.model}|${n}|${params.seed}`;
    say(`${n} samples from ${params.model}, seed ${params.seed}`);
    await openSample(state.picked >= 0 && state.picked < n ? state.picked : 0);
  } catch (e) { failed(e); }
}

async function openSample(index) {
  const g = state.grid;
  if (!g) return;
  state.picked = index;
  for (const cell of $("grid").children) cell.classList.toggle("picked", Number(cell.dataset.index) === index);
  try {
    const data = await fresh("film", "/api/glimpses", { model: g.model, n: g.n, seed: g.seed, index });
    if (!data) return;
    const info = data.model;
    player.load({ frames: bytes(data.canvases), shape: data.shape, read: null, write: data.write,
      readN: info.read_n, writeN: info.write_n, key: `${g.model}|${g.n}|${g.seed}|${index}` });
    $("player-title").textContent = `sample ${index} of ${g.n}, seed ${g.seed}, ${g.model}`;
  } catch (e) { failed(e); }
}

// ------------------------------------------------------------------ draw your own
const pad = $("pad");
const padCtx = pad.getContext("2d");
let stroke = null;
let pending = null;

function clearPad() {
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, pad.width, pad.height);
  state.drawn = false;
}

function inkColour() {
  return state.info && state.info.shape[0] === 3 ? $("ink").value : "#ffffff";
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  stroke = padPoint(event);
  padCtx.fillStyle = inkColour();
  padCtx.beginPath();
  padCtx.arc(stroke[0], stroke[1], 9, 0, 2 * Math.PI);
  padCtx.fill();
  state.drawn = true;
});
pad.addEventListener("pointermove", (event) => {
  if (!stroke) return;
  const point = padPoint(event);
  padCtx.strokeStyle = inkColour();
  padCtx.lineWidth = 18;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.beginPath();
  padCtx.moveTo(stroke[0], stroke[1]);
  padCtx.lineTo(point[0], point[1]);
  padCtx.stroke();
  stroke = point;
});
function endStroke() {
  if (!stroke) return;
  stroke = null;
  clearTimeout(pending);
  pending = setTimeout(reconstruct, 120);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
pad.addEventListener("pointerleave", endStroke);

$("clear").addEventListener("click", () => {
  clearPad();
  recon.clear();
  clearSeen();
  $("elbo").textContent = "";
});

function clearSeen() {
  for (const id of ["seen-image", "seen-input"]) {
    const canvas = $(id);
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
}

function reconstruct() {
  return readPicture(pad.toDataURL("image/png"), false, "your drawing");
}

let reconstructions = 0;
async function readPicture(dataUrl, invert, what) {
  if (!state.model) return;
  try {
    say(`${state.model} is reading ${what}…`);
    const data = await fresh("recon", "/api/reconstruct", {
      model: state.model, image: dataUrl, seed: 0, fit: true, invert,
    });
    if (!data) return;
    learn(data.model);
    const info = data.model;
    const [, c, h, w] = data.shape;
    for (const [id, key] of [["seen-image", "image"], ["seen-input", "input"]]) {
      fitCanvas($(id), h, w, 112);
      paint($(id), bytes(data[key]), 0, c, h, w);
    }
    reconstructions += 1;
    recon.load({ frames: bytes(data.canvases), shape: data.shape, read: data.read, write: data.write,
      readN: info.read_n, writeN: info.write_n, key: `${state.model}|${reconstructions}` });
    $("elbo").textContent = `−ELBO ${data.elbo.toFixed(2)} nats (reconstruction ${data.lx.toFixed(2)} + latent ${data.lz.toFixed(2)})`;
    $("elbo").dataset.seq = String(reconstructions);
    say(`${state.model} read ${what}`);
  } catch (e) { failed(e); }
}

// An uploaded picture is shrunk in the page (at most 280 pixels a side) and sent as PNG: the
// request stays far under the size limit whatever the camera made.
$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  $("upload").value = "";
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    failed(new Error(`cannot read ${file.name}: not a picture this browser can open`));
    return;
  }
  const scale = Math.min(1, 280 / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  await readPicture(canvas.toDataURL("image/png"), null, file.name);
});

// ------------------------------------------------------------------ latent walk
async function walk() {
  const g = state.grid;
  if (!g) return;
  const body = { model: g.model, n: g.n, seed: g.seed, a: Number($("walk-a").value), b: Number($("walk-b").value),
    steps: Number($("walk-steps").value) };
  try {
    say(`walking from sample ${body.a} to ${body.b}…`);
    const data = await fresh("walk", "/api/walk", body);
    if (!data) return;
    const [n, c, h, w] = data.shape;
    const pixels = bytes(data.images);
    const row = $("walk-row");
    row.replaceChildren();
    for (let i = 0; i < n; i++) {
      const cell = document.createElement("canvas");
      fitCanvas(cell, h, w, 84);
      paint(cell, pixels, i * c * h * w, c, h, w);
      cell.title = i === 0 ? `sample ${body.a}` : i === n - 1 ? `sample ${body.b}` : `${i} / ${n - 1} of the way`;
      row.append(cell);
    }
    row.dataset.key = `${g.model}|${g.n}|${g.seed}|${body.a}|${body.b}|${n}`;
    say(`a walk of ${n} pictures from sample ${body.a} to ${body.b}`);
  } catch (e) { failed(e); }
}

// ------------------------------------------------------------------ start
const player = new Player($("player"), $("scrub"), $("play"), $("glimpse"), $("player-boxes"));
const recon = new Player($("recon"), $("recon-scrub"), $("recon-play"), $("recon-glimpse"), $("recon-boxes"));

$("sample-form").addEventListener("submit", (event) => { event.preventDefault(); state.picked = -1; sampleGrid(); });
$("reseed").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 100000));
  state.picked = -1;
  sampleGrid();
});
$("walk-form").addEventListener("submit", (event) => { event.preventDefault(); walk(); });
$("model").addEventListener("change", () => pickModel($("model").value));

async function start() {
  clearPad();
  try {
    const data = await api("/api/models");
    state.models = data.models;
    state.limits = data.limits;
    const select = $("model");
    for (const m of data.models) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.kind === "built-in" ? `${m.id} (built-in)` : m.id;
      select.append(option);
    }
    if (!data.models.length) { say("no models", true); return; }
    await pickModel(data.models[0].id);
  } catch (e) { failed(e); }
}
start();
