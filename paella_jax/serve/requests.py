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
import dataclasses
import hashlib
import io
import os
from typing import Any

from paella_jax import request, sidecars

SERVED_MODES = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate")
# The JSON fields of each mode beside COMMON: a request's fields, but one "prompt" string where
# the request takes prompts, and images as base64 strings.
FIELDS = {"generate": ("prompt",), "inpaint": ("prompt", "image", "mask", "box"),
          "outpaint": ("prompt", "image", "canvas", "offset"), "edit": ("prompt", "image"),
          "vary": ("image",), "interpolate": ("prompts", "frames", "mode")}
REQUIRED = {"generate": ("prompt",), "inpaint": ("prompt", "image"),
            "outpaint": ("prompt", "image", "canvas"), "edit": ("prompt", "image"),
            "vary": ("image",), "interpolate": ("prompts",)}
COMMON = ("seed", "num_images", "negative_prompt", *request.SETTING_NAMES)
STRINGS = ("prompt", "negative_prompt")
IMAGES = ("image", "mask")


class BadRequest(ValueError):
  """A request the server refuses; `status` is the HTTP status (4xx)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


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

  The body is checked as the request it becomes (`paella_jax.request`), then its prompts are
  measured: `count_tokens(prompt)` gives a prompt's token count, special tokens included, which
  must not exceed `max_tokens` (the text encoder's context); num_images must not exceed
  `max_images`. Its images are decoded and stored last (see `store`).
  """
  if mode not in SERVED_MODES:
    raise BadRequest(f"unknown mode {mode!r}; one of {SERVED_MODES}", 404)
  if not isinstance(body, dict):
    raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
  allowed = (*COMMON, *FIELDS[mode])
  unknown = sorted(set(body) - set(allowed))
  if unknown:
    raise BadRequest(f"unknown fields {unknown} for {mode}; allowed: {sorted(allowed)}")
  body = {k: v for k, v in body.items() if v is not None}
  missing = [name for name in REQUIRED[mode] if name not in body]
  if missing:
    raise BadRequest(f"{mode} needs the field(s) {missing}")
  for name in (*STRINGS, *IMAGES):
    if name in body and not isinstance(body[name], str):
      want = "a base64-encoded image (PNG or JPEG)" if name in IMAGES else "a string"
      raise BadRequest(f"field {name!r} must be {want}, got {body[name]!r:.80}")
  fields = {("prompts" if k == "prompt" else k): v for k, v in body.items()
            if k not in request.SETTING_NAMES}
  try:
    req = request.REQUESTS[mode](
        **fields, settings={k: v for k, v in body.items() if k in request.SETTING_NAMES})
  except ValueError as e:
    raise BadRequest(str(e)) from None
  if req.num_images > max_images:
    raise BadRequest(f"too many images: {req.num_images} requested, this server samples at "
                     f"most {max_images} per request (--max-batch)", 413)
  for prompt in (*getattr(req, "prompts", ()), *filter(None, [req.negative_prompt])):
    tokens = count_tokens(prompt)
    if tokens > max_tokens:
      raise BadRequest(f"prompt too long: {tokens} tokens with the start and end tokens, the text "
                       f"encoder takes at most {max_tokens}: {prompt[:40]!r}...")
  return dataclasses.replace(req, **{name: store(inputs_dir, decode_image(name, body[name]))
                                     for name in IMAGES if name in body})


def sidecar(pipe, req: request.Request, prepared, index: int) -> dict:
  """The JSON sidecar of one image, as paella-sample writes it."""
  return sidecars.image_sidecar(sidecars.run_record(pipe, req, prepared.settings), index,
                                prepared.labels[index])
