// The paella-serve page: the settings and a mode's inputs -> POST /v1/<mode> -> the gallery.
// A 4xx answer's {"error"} is shown in the status line (red); the images come back as base64 PNGs.
// The API key field, when filled, goes with every request (Authorization: Bearer).
"use strict";

const $ = (id) => document.getElementById(id);
const paint = $("paint");
const layout = $("layout");
let image = null;         // the uploaded image (an offscreen canvas at its own size)
let mask = null;          // the painted mask, same size: white = repaint
let painting = false;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  $("status").setAttribute("role", error ? "alert" : "status");
}

function numberOrOff(text) {
  text = text.trim();
  if (text === "") return undefined;
  return text === "off" ? "off" : Number(text);
}

function numbers(...ids) {
  // The fields as numbers; undefined when all are blank (the server's default), a blank among
  // filled ones as NaN (sent as null, which the server refuses naming the field).
  const values = ids.map((id) => $(id).value.trim());
  if (values.every((v) => v === "")) return undefined;
  return values.map((v) => (v === "" ? NaN : Number(v)));
}

function settings() {
  // The prompt and the sampler settings every mode takes; blank fields are left to the model.
  const body = { prompt: $("prompt").value, seed: Number($("seed").value || 0),
                 num_images: Number($("num_images").value || 1) };
  if ($("steps").value) body.steps = Number($("steps").value);
  const cfg = numberOrOff($("cfg").value), mass = numberOrOff($("typical_mass").value);
  if (cfg !== undefined) body.cfg = cfg;
  if (mass !== undefined) body.typical_mass = mass;
  const temperature = numbers("t_start", "t_end");
  if (temperature) body.temperature = temperature;
  return body;
}

async function request(mode, body) {
  status(`${mode}...`);
  const started = performance.now();
  const headers = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();  // a server started with an API key (401 without)
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(`/v1/${mode}`, {
    method: "POST", headers, body: JSON.stringify(body) });
  const text = await response.text();
  let answer;
  try {
    answer = JSON.parse(text);
  } catch (e) {
    answer = { error: text.slice(0, 200) || response.statusText };
  }
  if (!response.ok) {
    status(`${mode} refused (${response.status}): ${answer.error}`, true);
    return;
  }
  const ms = Math.round(performance.now() - started);
  const run = document.createElement("figure");
  run.className = `run ${mode}`;
  const caption = document.createElement("figcaption");
  caption.textContent = `${mode}: ${answer.images.length} image(s) in ${ms} ms` +
    (body.prompt ? ` - "${body.prompt}"` : body.prompts ? ` - ${body.prompts.join(" -> ")}` : "");
  run.append(caption);
  for (const [i, png] of answer.images.entries()) {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${png}`;
    img.title = `${answer.sidecars[i].label}\n${JSON.stringify(answer.sidecars[i].sampler)}`;
    img.className = `result ${mode}`;
    run.append(img);
  }
  $("gallery").prepend(run);
  status(caption.textContent);
}

function send(mode, body) {
  request(mode, body).catch((e) => status(`${mode} failed: ${e}`, true));
}

function pngOf(canvas) {
  return canvas.toDataURL("image/png").split(",")[1];
}

// --------------------------------------------------------------------------- inpainting's brush

function redraw() {
  const ctx = paint.getContext("2d");
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

// --------------------------------------------------------------------------- outpainting's canvas

function drawLayout() {
  // The outpainting canvas scaled into the preview: grey = to paint, the image at its offset.
  const ctx = layout.getContext("2d");
  ctx.clearRect(0, 0, layout.width, layout.height);
  const canvas = numbers("canvas_h", "canvas_w");
  if (!image || !canvas || canvas.some((v) => !(v > 0))) return;
  const [h, w] = canvas;
  const offset = numbers("offset_top", "offset_left") ||
    [Math.floor((h - image.height) / 2), Math.floor((w - image.width) / 2)];
  const scale = Math.min(layout.width / w, layout.height / h);
  ctx.fillStyle = "#ccc";
  ctx.fillRect(0, 0, w * scale, h * scale);
  ctx.drawImage(image, offset[1] * scale, offset[0] * scale, image.width * scale,
                image.height * scale);
}

// --------------------------------------------------------------------------- wiring

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
    $("canvas_h").value = image.height;       // default: twice as wide, the image centred
    $("canvas_w").value = 2 * image.width;
    drawLayout();
    for (const button of document.querySelectorAll(".needs-image")) button.disabled = false;
    $("image-size").textContent = `${image.width}x${image.height}`;
    status(`image ${image.width}x${image.height}: inpaint (paint the region first), outpaint, ` +
           "edit or vary it");
  };
  img.onerror = () => status(`${file.name} is not an image the browser can read`, true);
  img.src = URL.createObjectURL(file);
});
paint.addEventListener("mousedown", (e) => { if (image) { painting = true; brushAt(e); } });
paint.addEventListener("mousemove", (e) => { if (painting) brushAt(e); });
window.addEventListener("mouseup", () => { painting = false; });
$("clear").addEventListener("click", () => { if (image) clearMask(); });
for (const id of ["canvas_h", "canvas_w", "offset_top", "offset_left"])
  $(id).addEventListener("input", drawLayout);

$("generate").addEventListener("click", () => send("generate", settings()));
$("inpaint").addEventListener("click", () => send("inpaint",
  Object.assign(settings(), { image: pngOf(image), mask: pngOf(mask) })));
$("outpaint").addEventListener("click", () => {
  const body = Object.assign(settings(), { image: pngOf(image),
                                           canvas: numbers("canvas_h", "canvas_w") });
  const offset = numbers("offset_top", "offset_left");
  if (offset) body.offset = offset;
  send("outpaint", body);
});
$("edit").addEventListener("click", () => {
  const body = Object.assign(settings(), { image: pngOf(image) });
  if ($("start_step").value) body.start_step = Number($("start_step").value);
  send("edit", body);
});
$("vary").addEventListener("click", () => {
  const body = Object.assign(settings(), { image: pngOf(image) });
  delete body.prompt;
  send("vary", body);
});
$("interpolate").addEventListener("click", () => {
  const body = settings();
  delete body.prompt;
  body.prompts = $("prompts").value.split("\n").map((p) => p.trim()).filter((p) => p);
  body.frames = Number($("frames").value || 2);
  body.mode = $("path").value;
  send("interpolate", body);
});
