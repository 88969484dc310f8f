"""HTTP request bodies -> typed requests (`paella_jax.request`), and their sidecars.

A JSON body is checked field by field, its base64 images are decoded and stored (content-addressed
PNGs under the server's inputs folder, so that sidecars can name them), and it becomes the typed
request paella-sample builds from its arguments: the server prepares its rows with
`Pipeline.prepare` and records the same sidecar (`paella_jax.sidecars`), so `paella-sample
replay` regenerates a served image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
from typing import Any

from paella_jax import request, sidecars
from paella_jax.tokenizer import check_prompts

SERVED_MODES = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate")
SETTINGS = {"steps": int, "start_step": int, "cfg": "number_or_off", "typical_mass": "number_or_off",
            "typical_min_tokens": int, "temperature": ("number", 2), "renoise_mode": str}
# negative_prompt: Paella v3 guides away from it instead of the empty prompt (v1 refuses it).
COMMON = {"seed": int, "num_images": int, "negative_prompt": str, **SETTINGS}
FIELDS = {
    "generate": {"prompt": str},
    "inpaint": {"prompt": str, "image": "image", "mask": "image", "box": (int, 4)},
    "outpaint": {"prompt": str, "image": "image", "canvas": (int, 2), "offset": (int, 2)},
    "edit": {"prompt": str, "image": "image"},
    "vary": {"image": "image"},
    "interpolate": {"prompts": (str, None), "frames": int, "mode": str},
}
REQUIRED = {"generate": ("prompt",), "inpaint": ("prompt", "image"),
            "outpaint": ("prompt", "image", "canvas"), "edit": ("prompt", "image"),
            "vary": ("image",), "interpolate": ("prompts",)}


class BadRequest(ValueError):
  """A request the server refuses; `status` is the HTTP status (4xx)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _check(name: str, value, kind) -> None:
  """Raises BadRequest unless `value` has the JSON type `kind` describes."""
  if kind == "number_or_off":
    ok = value == "off" or _is_number(value)
    want = "a finite number or \"off\""
  elif kind == "image":
    ok, want = isinstance(value, str), "a base64-encoded image (PNG or JPEG)"
  elif isinstance(kind, tuple):
    item, length = kind
    check = _is_number if item == "number" else (
        lambda v: isinstance(v, item) and not isinstance(v, bool))
    ok = (isinstance(value, list) and (length is None or len(value) == length)
          and all(check(v) for v in value))
    name_of = "number" if item == "number" else item.__name__
    want = f"a list of {length or 'some'} {name_of}s"
  else:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    want = {int: "an integer", str: "a string"}[kind]
  if not ok:
    raise BadRequest(f"field {name!r} must be {want}, got {value!r:.80}")


def decode_image(name: str, data: str) -> bytes:
  """A base64 image (a data: URL prefix is allowed) -> its bytes as a PNG, checked to decode."""
  from PIL import Image, UnidentifiedImageError
  if data.startswith("data:"):
    data = data.partition(",")[2]
  try:
    raw = base64.b64decode(data, validate=True)
    with Image.open(io.BytesIO(raw)) as image:
      image.load()
      out = io.BytesIO()
      image.save(out, format="PNG")
  except UnidentifiedImageError:
    raise BadRequest(f"field {name!r} is not an image file PIL can read (PNG, JPEG, ...)") from None
  except (binascii.Error, OSError, SyntaxError, ValueError) as e:
    raise BadRequest(f"field {name!r} does not decode as an image: {e}") from None
  return out.getvalue()


def store(inputs_dir: str, png: bytes) -> str:
  """Writes PNG bytes as inputs_dir/SHA256.png (once) and returns the absolute path."""
  os.makedirs(inputs_dir, exist_ok=True)
  path = os.path.abspath(os.path.join(inputs_dir, hashlib.sha256(png).hexdigest()[:32] + ".png"))
  if not os.path.exists(path):
    with open(path + ".part", "wb") as f:
      f.write(png)
    os.replace(path + ".part", path)
  return path


def to_request(mode: str, body: Any, inputs_dir: str, max_images: int, max_tokens: int,
               count_tokens) -> request.Request:
  """The typed request of a request body; BadRequest names what is wrong.

  `count_tokens(prompt)` gives a prompt's token count, special tokens included, which must not
  exceed `max_tokens` (the text encoder's context); num_images must not exceed `max_images`.
  """
  if mode not in SERVED_MODES:
    raise BadRequest(f"unknown mode {mode!r}; one of {SERVED_MODES}", 404)
  if not isinstance(body, dict):
    raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
  allowed = {**COMMON, **FIELDS[mode]}
  unknown = sorted(set(body) - set(allowed))
  if unknown:
    raise BadRequest(f"unknown fields {unknown} for {mode}; allowed: {sorted(allowed)}")
  missing = [name for name in REQUIRED[mode] if body.get(name) is None]
  if missing:
    raise BadRequest(f"{mode} needs the field(s) {missing}")
  body = {k: v for k, v in body.items() if v is not None}
  for name, value in body.items():
    _check(name, value, allowed[name])
  if body.get("num_images", 1) > max_images:
    raise BadRequest(f"too many images: {body['num_images']} requested, this server samples at "
                     f"most {max_images} per request (--max-batch)", 413)
  prompts = body.get("prompts", [body["prompt"]] if "prompt" in body else [])
  for prompt in prompts + [body[k] for k in ("negative_prompt",) if k in body]:
    try:
      check_prompts(prompt)
    except ValueError as e:
      raise BadRequest(str(e)) from None
    tokens = count_tokens(prompt)
    if tokens > max_tokens:
      raise BadRequest(f"prompt too long: {tokens} tokens with the start and end tokens, the text "
                       f"encoder takes at most {max_tokens}: {prompt[:40]!r}...")
  if mode == "inpaint" and ("mask" in body) == ("box" in body):
    raise BadRequest("inpaint needs a mask image or a box [top, left, bottom, right] (exactly one)")
  fields = {name: store(inputs_dir, decode_image(name, value)) if allowed[name] == "image"
            else value for name, value in body.items()
            if name not in SETTINGS and name != "prompt"}
  if prompts:
    fields["prompts"] = prompts
  try:
    return request.REQUESTS[mode](**fields, settings={k: body[k] for k in SETTINGS if k in body})
  except ValueError as e:
    raise BadRequest(str(e)) from None


def sidecar(pipe, req: request.Request, prepared, index: int) -> dict:
  """The JSON sidecar of one image, as paella-sample writes it."""
  return sidecars.image_sidecar(sidecars.run_record(pipe, req, prepared.settings), index,
                                prepared.labels[index])
