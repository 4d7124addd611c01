// MaskGIT studio page: talks to the JSON API (pipeline/studio/server.py); no framework.
"use strict";

const $ = (id) => document.getElementById(id);
const studio = { info: null, image: null, size: 0, mask: null, lastGen: null };
window.studio = studio;  // for the browser test and the curious

// ------------------------------------------------------------------ plumbing
let busyCount = 0, busyTimer = null;
function setBusy(on, label) {
  busyCount += on ? 1 : -1;
  const busy = busyCount > 0;
  $("busy").hidden = !busy;
  document.querySelectorAll("button.primary").forEach((b) => { b.disabled = busy; });
  clearInterval(busyTimer);
  if (busy) {
    const t0 = performance.now();
    const tick = () => { $("busy-text").textContent = `${label}… ${((performance.now() - t0) / 1000).toFixed(1)} s`; };
    tick();
    busyTimer = setInterval(tick, 100);
  }
  document.body.dataset.busy = busy ? "1" : "0";
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

async function api(path, body, label) {
  showError("");
  setBusy(true, label || "working");
  try {
    const res = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let data;
    try { data = await res.json(); } catch (e) { data = { error: `the server answered ${res.status} without JSON` }; }
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    return data;
  } catch (e) {
    showError(e.message.startsWith("Failed to fetch") ? "the studio server is not reachable (is it still running?)" : e.message);
    throw e;
  } finally {
    setBusy(false);
  }
}

function fillSelect(sel, items, selected) {
  sel.innerHTML = "";
  for (const [value, text] of items) {
    const o = document.createElement("option");
    o.value = value; o.textContent = text;
    if (selected !== undefined && (Array.isArray(selected) ? selected.includes(value) : selected === value)) o.selected = true;
    sel.appendChild(o);
  }
}

function num(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }

// ------------------------------------------------------------------ tabs
document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === t));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${t.dataset.view}`; });
  showError("");
}));

// ------------------------------------------------------------------ info
async function loadInfo() {
  let info;
  try { info = await api("/api/info", undefined, "loading"); } catch (e) { $("status").textContent = "no model"; return; }
  studio.info = info;
  const classes = info.classes.map((c) => [String(c.index), `${c.index}: ${c.name}`]);
  fillSelect($("gen-classes"), classes, ["0", "1"].filter((v) => Number(v) < info.num_classes));
  fillSelect($("edit-class"), classes, "0");
  fillSelect($("gen-schedule"), info.schedules.map((s) => [s, s]), "cosine");
  fillSelect($("gen-order"), info.orders.map((s) => [s, s]), "confidence");
  fillSelect($("gen-guidance-schedule"), info.guidance_schedules.map((s) => [s, s]), "constant");
  fillSelect($("edit-sample"), info.samples.map((s) => [s.id, s.name]));
  $("gen-compare-ar").disabled = !info.ar_model;
  $("gen-compare-ar").checked = !!info.ar_model;
  if (!info.ar_model) $("gen-compare-ar").parentElement.title = "start the studio with --ar-model to compare";
  if (info.null_label === null) {
    $("gen-guidance-scale").disabled = true;
    $("gen-guidance-scale").title = "this model has no null class (trained without class dropout): no guidance";
  }
  $("status").textContent = `${info.model.split("/").slice(-3).join("/")} · ${info.image_size}px · ` +
    `${info.num_classes} classes${info.ar_model ? " · AR baseline" : ""}`;
  document.body.dataset.ready = "1";
}

// ------------------------------------------------------------------ generate
function genRequest() {
  return {
    classes: Array.from($("gen-classes").selectedOptions).map((o) => Number(o.value)),
    n: num("gen-n"), seed: num("gen-seed"), steps: num("gen-steps"), schedule: $("gen-schedule").value,
    choice_temperature: num("gen-choice-temperature"), order: $("gen-order").value,
    guidance_scale: $("gen-guidance-scale").disabled ? 0 : num("gen-guidance-scale"),
    guidance_schedule: $("gen-guidance-schedule").value,
    compare_ar: $("gen-compare-ar").checked && !$("gen-compare-ar").disabled,
    strip_index: studio.stripIndex || 0,
  };
}

async function generate(stripIndex) {
  studio.stripIndex = stripIndex || 0;
  const req = genRequest();
  if (!req.classes.length) { showError("pick at least one class"); return; }
  const out = await api("/api/generate", req, "sampling");
  studio.lastGen = out;
  $("gen-grid").src = out.grid;
  $("gen-caption").textContent = `MaskGIT · ${out.labels.length} images · T=${out.steps} · ${out.seconds.toFixed(2)} s`;
  $("gen-strip").src = out.strip;
  $("strip-caption").textContent = `Step-by-step decoding of image ${out.strip_index} (class ${out.labels[out.strip_index]}): ` +
    "top = tokens kept after each step (grey = still masked), bottom = each step's prediction";
  $("ar-figure").hidden = !out.ar;
  if (out.ar) {
    $("ar-grid").src = out.ar.grid;
    $("ar-caption").textContent = `AR baseline · ${studio.info.latent_size ** 2} steps · ${out.ar.seconds.toFixed(2)} s`;
  }
  $("gen-cli").textContent = `same images from the command line:\n${out.cli}`;
  $("gen-cli").hidden = false;
  document.body.dataset.generated = String(Number(document.body.dataset.generated || 0) + 1);
}

$("gen-form").addEventListener("submit", (e) => { e.preventDefault(); generate(0).catch(() => {}); });
$("gen-grid").addEventListener("click", (e) => {
  const out = studio.lastGen;
  if (!out) return;
  const img = e.currentTarget, pad = 2, s = studio.info.image_size;
  const scale = img.naturalWidth / img.clientWidth;
  const col = Math.floor((e.offsetX * scale - pad) / (s + pad)), row = Math.floor((e.offsetY * scale - pad) / (s + pad));
  const i = row * out.n + col;
  if (col >= 0 && col < out.n && i >= 0 && i < out.labels.length) generate(i).catch(() => {});
});

// ------------------------------------------------------------------ edit: image in
const canvas = $("edit-canvas");
const ctx = canvas.getContext("2d");
let maskCtx = null, boxStart = null, painting = false;

function setImage(dataUrl, rule) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      studio.image = dataUrl; studio.size = img.naturalWidth; studio.imgEl = img;
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const m = document.createElement("canvas");
      m.width = img.naturalWidth; m.height = img.naturalHeight;
      maskCtx = m.getContext("2d");
      studio.mask = m;
      clearMask();
      $("edit-rule").textContent = rule || "";
      $("edit-result").removeAttribute("src");
      $("edit-download").hidden = true;
      document.body.dataset.imageLoaded = "1";
      resolve();
    };
    img.onerror = () => reject(new Error("the browser could not show the image"));
    img.src = dataUrl;
  });
}

function clearMask() {
  if (!maskCtx) return;
  maskCtx.fillStyle = "#000";
  maskCtx.fillRect(0, 0, studio.mask.width, studio.mask.height);
  redraw();
}

function redraw(box) {
  if (!studio.imgEl) return;
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(studio.imgEl, 0, 0);
  if (currentOp() === "outpaint") return;  // the region does not apply: show the image as it is
  const m = maskCtx.getImageData(0, 0, canvas.width, canvas.height);
  const over = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let p = 0; p < m.data.length; p += 4) {
    if (m.data[p] > 127) {  // the server's rule: white (> 127) = the region
      over.data[p] = (over.data[p] + 255) >> 1; over.data[p + 1] >>= 1; over.data[p + 2] >>= 1;
    }
  }
  ctx.putImageData(over, 0, 0);
  if (box) {
    ctx.strokeStyle = "#ff0"; ctx.lineWidth = 1;
    ctx.strokeRect(box.x + 0.5, box.y + 0.5, box.w - 1, box.h - 1);
  }
}

$("edit-load-sample").addEventListener("click", async () => {
  const id = $("edit-sample").value;
  if (!id) { showError("no sample images available"); return; }
  try {
    const out = await api(`/api/samples/${encodeURIComponent(id)}`, undefined, "loading");
    await setImage(out.image, `${out.name}: ${out.rule}`);
  } catch (e) { /* shown */ }
});

$("edit-file").addEventListener("change", () => {
  const f = $("edit-file").files[0];
  if (!f) return;
  const reader = new FileReader();
  reader.onload = async () => {
    try {
      const out = await api("/api/fit", { image: reader.result }, "loading");
      await setImage(out.image, `${f.name}: ${out.rule}`);
    } catch (e) { /* shown */ }
  };
  reader.onerror = () => showError(`could not read ${f.name}`);
  reader.readAsDataURL(f);
});

// ------------------------------------------------------------------ edit: the brush and the box
function toImage(e) {  // pointer event -> image pixel coordinates
  const r = canvas.getBoundingClientRect();
  return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height };
}

function dab(p) {  // a binary disc (no anti-aliasing, so the mask is exactly what is shown)
  const rad = Number($("brush-size").value) / 2;
  const d = maskCtx.getImageData(0, 0, studio.mask.width, studio.mask.height);
  for (let y = Math.max(0, Math.floor(p.y - rad)); y <= Math.min(d.height - 1, Math.ceil(p.y + rad)); y++) {
    for (let x = Math.max(0, Math.floor(p.x - rad)); x <= Math.min(d.width - 1, Math.ceil(p.x + rad)); x++) {
      if ((x + 0.5 - p.x) ** 2 + (y + 0.5 - p.y) ** 2 <= rad * rad + 0.25) {
        const i = (y * d.width + x) * 4;
        d.data[i] = d.data[i + 1] = d.data[i + 2] = 255; d.data[i + 3] = 255;
      }
    }
  }
  maskCtx.putImageData(d, 0, 0);
}

let last = null;
function stroke(p) {  // dabs every half pixel along the segment from the last point
  if (last) {
    const n = Math.max(1, Math.ceil(Math.hypot(p.x - last.x, p.y - last.y) * 2));
    for (let k = 1; k <= n; k++) dab({ x: last.x + (p.x - last.x) * k / n, y: last.y + (p.y - last.y) * k / n });
  } else dab(p);
  last = p;
}

function boxOf(a, b) {
  const x0 = Math.max(0, Math.floor(Math.min(a.x, b.x))), y0 = Math.max(0, Math.floor(Math.min(a.y, b.y)));
  const x1 = Math.min(canvas.width, Math.ceil(Math.max(a.x, b.x))), y1 = Math.min(canvas.height, Math.ceil(Math.max(a.y, b.y)));
  return { x: x0, y: y0, w: Math.max(1, x1 - x0), h: Math.max(1, y1 - y0) };
}

canvas.addEventListener("pointerdown", (e) => {
  if (!maskCtx) { showError("load an image first"); return; }
  canvas.setPointerCapture(e.pointerId);
  painting = true;
  const p = toImage(e);
  if (document.querySelector("input[name=tool]:checked").value === "box") boxStart = p;
  else { last = null; stroke(p); redraw(); }
});
canvas.addEventListener("pointermove", (e) => {
  if (!painting) return;
  const p = toImage(e);
  if (boxStart) redraw(boxOf(boxStart, p));
  else { stroke(p); redraw(); }
});
function endStroke(e) {
  if (!painting) return;
  painting = false;
  if (boxStart) {
    const b = boxOf(boxStart, toImage(e));
    maskCtx.fillStyle = "#fff";
    maskCtx.fillRect(b.x, b.y, b.w, b.h);
    boxStart = null;
  }
  last = null;
  redraw();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
$("mask-clear").addEventListener("click", clearMask);
studio.maskDataURL = () => (studio.mask ? studio.mask.toDataURL("image/png") : null);

// ------------------------------------------------------------------ edit: run
function currentOp() { return document.querySelector("input[name=op]:checked").value; }

function syncOp() {
  const op = currentOp();
  $("outpaint-sides").style.display = op === "outpaint" ? "" : "none";
  $("before-caption").textContent = op === "outpaint" ? "Before" : "Before — paint the region";
  redraw();
}
document.querySelectorAll("input[name=op]").forEach((r) => r.addEventListener("change", syncOp));
syncOp();

$("edit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!studio.image) { showError("load an image first: upload one or pick a sample"); return; }
  const op = currentOp();
  const req = { op, image: studio.image, class: Number($("edit-class").value), seed: num("edit-seed"),
    steps: num("edit-steps") };
  if (op === "outpaint") {
    req.extend = { left: num("ext-left") || 0, right: num("ext-right") || 0, top: num("ext-top") || 0,
      bottom: num("ext-bottom") || 0 };
  } else req.mask = studio.maskDataURL();
  try {
    const out = await api("/api/edit", req, op === "outpaint" ? "outpainting" : `${op === "replace" ? "replacing" : "inpainting"}`);
    $("edit-result").src = out.image;
    $("edit-caption").textContent = `After · ${op} · ${out.width}x${out.height} · ${out.tokens_regenerated} tokens · ` +
      `${out.seconds.toFixed(2)} s`;
    $("edit-download").href = out.image;
    $("edit-download").download = `${op}-class${req.class}-seed${req.seed}.png`;
    $("edit-download").hidden = false;
    $("edit-cli").textContent = `same image from the command line (input.png = the image shown before` +
      `${op === "inpaint" ? ", mask.png = the painted region" : ""}):\n${out.cli}`;
    $("edit-cli").hidden = false;
    studio.lastEdit = out;
    document.body.dataset.edited = String(Number(document.body.dataset.edited || 0) + 1);
  } catch (err) { /* shown */ }
});

loadInfo();
