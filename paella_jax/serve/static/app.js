// The paella-serve page: settings -> POST /v1/generate or /v1/inpaint -> gallery.
"use strict";

const $ = (id) => document.getElementById(id);
const paint = $("paint");
const ctx = paint.getContext("2d");
let image = null;         // the uploaded image (an offscreen canvas at its own size)
let mask = null;          // the painted mask, same size: white = repaint
let painting = false;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function numberOrOff(text) {
  text = text.trim();
  if (text === "") return undefined;
  return text === "off" ? "off" : Number(text);
}

function settings() {
  const body = { prompt: $("prompt").value, seed: Number($("seed").value || 0),
                 num_images: Number($("num_images").value || 1) };
  if ($("steps").value) body.steps = Number($("steps").value);
  const cfg = numberOrOff($("cfg").value), mass = numberOrOff($("typical_mass").value);
  if (cfg !== undefined) body.cfg = cfg;
  if (mass !== undefined) body.typical_mass = mass;
  if ($("t_start").value && $("t_end").value)
    body.temperature = [Number($("t_start").value), Number($("t_end").value)];
  return body;
}

async function request(mode, body) {
  status(`${mode}...`);
  const started = performance.now();
  const response = await fetch(`/v1/${mode}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) {
    status(`${response.status}: ${answer.error}`, true);
    return;
  }
  for (const [i, png] of answer.images.entries()) {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${png}`;
    img.title = JSON.stringify(answer.sidecars[i].sampler);
    img.className = `result ${mode}`;
    $("gallery").prepend(img);
  }
  status(`${mode}: ${answer.images.length} image(s) in ${Math.round(performance.now() - started)} ms`);
}

function pngOf(canvas) {
  return canvas.toDataURL("image/png").split(",")[1];
}

function redraw() {
  ctx.clearRect(0, 0, paint.width, paint.height);
  if (!image) return;
  ctx.drawImage(image, 0, 0, paint.width, paint.height);
  ctx.globalAlpha = 0.5;
  ctx.drawImage(mask, 0, 0, paint.width, paint.height);
  ctx.globalAlpha = 1.0;
}

function clearMask() {
  const m = mask.getContext("2d");
  m.fillStyle = "black";
  m.fillRect(0, 0, mask.width, mask.height);
  redraw();
}

function brushAt(event) {
  const rect = paint.getBoundingClientRect();
  const x = (event.clientX - rect.left) * mask.width / rect.width;
  const y = (event.clientY - rect.top) * mask.height / rect.height;
  const m = mask.getContext("2d");
  m.fillStyle = "white";
  m.beginPath();
  m.arc(x, y, Number($("brush").value) * mask.width / 64, 0, 2 * Math.PI);
  m.fill();
  redraw();
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  const img = new Image();
  img.onload = () => {
    image = document.createElement("canvas");
    image.width = img.naturalWidth;
    image.height = img.naturalHeight;
    image.getContext("2d").drawImage(img, 0, 0);
    mask = document.createElement("canvas");
    mask.width = image.width;
    mask.height = image.height;
    clearMask();
    $("inpaint").disabled = false;
    status(`image ${image.width}x${image.height}: paint the region to repaint`);
  };
  img.src = URL.createObjectURL(file);
});
paint.addEventListener("mousedown", (e) => { if (image) { painting = true; brushAt(e); } });
paint.addEventListener("mousemove", (e) => { if (painting) brushAt(e); });
window.addEventListener("mouseup", () => { painting = false; });
$("clear").addEventListener("click", () => { if (image) clearMask(); });
$("generate").addEventListener("click", () => request("generate", settings()).catch(
  (e) => status(String(e), true)));
$("inpaint").addEventListener("click", () => {
  const body = Object.assign(settings(), { image: pngOf(image), mask: pngOf(mask) });
  request("inpaint", body).catch((e) => status(String(e), true));
});
