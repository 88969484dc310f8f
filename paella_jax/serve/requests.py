"""HTTP request bodies -> typed requests (`paella_jax.request`), and their sidecars.

A JSON body is checked completely on its own, before it can join a batch: its fields as the
typed request it becomes (the one paella-sample builds from its arguments), the server's bounds
(`Limits`: prompt bytes before tokenizing, rows, steps, canvas and image pixels), its prompts'
token counts, and its base64 images, decoded in memory with their size read from the header
first. Nothing is written then: the server prepares the request's rows (`Pipeline.prepare`) and
only a request that prepared without error has its images stored (`InputStore`) under the
names its sidecars record (`paella_jax.sidecars`), so `paella-sample replay` regenerates a
served image. A refused body raises `BadRequest` with the HTTP status and the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
from typing import Any

import numpy as np

from paella_jax import request, sidecars
from paella_jax.checks import FieldError
from paella_jax.images import decode_image_bytes
from paella_jax.serve.limits import Limits

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
  """A request the server refuses: `status` the HTTP status (4xx), `field` the JSON field at
  fault (None when it is the request as a whole)."""

  def __init__(self, message: str, status: int = 400, field: str | None = None):
    super().__init__(message)
    self.status, self.field = status, field


def json_field(mode: str, name: str | None) -> str | None:
  """The JSON name of a request field: "prompt" for the prompts of a one-prompt mode."""
  return "prompt" if name == "prompts" and "prompt" in FIELDS.get(mode, ()) else name


def decode_image(name: str, data: str, max_pixels: int) -> np.ndarray:
  """A base64 image (a data: URL prefix is allowed) -> (H, W, 3) uint8, upright; its header's
  size is checked against `max_pixels` before its pixels are decoded."""
  if data.startswith("data:"):
    data = data.partition(",")[2]
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BadRequest(f"field {name!r} is not base64: {e}", field=name) from None
  try:
    return decode_image_bytes(raw, max_pixels)
  except ValueError as e:
    raise BadRequest(f"field {name!r} {e}", 413 if "allowed" in str(e) else 400, name) from None


def png_bytes(image: np.ndarray) -> bytes:
  """(H, W, 3) uint8 -> PNG bytes."""
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


def _rows(req: request.Request) -> int:
  """The images a request makes."""
  per_input = req.frames if isinstance(req, request.Interpolate) else len(
      getattr(req, "prompts", None) or ("",))
  return per_input * req.num_images


def to_request(mode: str, body: Any, limits: Limits, max_tokens: int,
               count_tokens) -> request.Request:
  """The typed request of a request body, its images as decoded arrays; BadRequest names what
  is wrong. `count_tokens(prompt)` gives a prompt's token count, special tokens included, which
  must not exceed `max_tokens` (the text encoder's context)."""
  if mode not in SERVED_MODES:
    raise BadRequest(f"unknown mode {mode!r}; one of {SERVED_MODES}", 404)
  if not isinstance(body, dict):
    raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
  allowed = (*COMMON, *FIELDS[mode])
  unknown = sorted(set(body) - set(allowed))
  if unknown:
    raise BadRequest(f"unknown fields {unknown} for {mode}; allowed: {sorted(allowed)}",
                     field=unknown[0])
  body = {k: v for k, v in body.items() if v is not None}
  missing = [name for name in REQUIRED[mode] if name not in body]
  if missing:
    raise BadRequest(f"{mode} needs the field(s) {missing}", field=missing[0])
  for name in (*STRINGS, *IMAGES):
    if name in body and not isinstance(body[name], str):
      want = "a base64-encoded image (PNG or JPEG)" if name in IMAGES else "a string"
      raise BadRequest(f"field {name!r} must be {want}, got {body[name]!r:.80}", field=name)
  prompts = [body[k] for k in STRINGS if k in body] + (
      body["prompts"][:limits.max_rows + 1] if isinstance(body.get("prompts"), list) else [])
  for prompt in prompts:
    if isinstance(prompt, str) and len(prompt.encode("utf-8", "surrogatepass")) > (
        limits.max_prompt_bytes):
      name = "prompts" if mode == "interpolate" else "prompt"
      raise BadRequest(f"prompt too long: over {limits.max_prompt_bytes} bytes (UTF-8) "
                       f"({prompt[:40]!r}...)", 413, name)
  fields = {("prompts" if k == "prompt" else k): v for k, v in body.items()
            if k not in request.SETTING_NAMES and k not in IMAGES}
  try:
    req = request.REQUESTS[mode](
        **fields, **{name: "(upload)" for name in IMAGES if name in body},
        settings={k: v for k, v in body.items() if k in request.SETTING_NAMES})
  except FieldError as e:
    raise BadRequest(str(e), field=json_field(mode, e.field)) from None
  except ValueError as e:
    raise BadRequest(str(e)) from None
  rows = _rows(req)
  if rows > limits.max_rows:
    name = "frames" if mode == "interpolate" and rows > req.num_images * len(req.prompts) else (
        "num_images")
    raise BadRequest(f"too many images: {rows} requested, this server samples at most "
                     f"{limits.max_rows} per request (--max-batch)", 413, name)
  steps = req.settings.get("steps")
  if isinstance(steps, int) and steps > limits.max_steps:
    raise BadRequest(f"steps must be at most {limits.max_steps} on this server (--max-steps), "
                     f"got {steps}", field="steps")
  if isinstance(req, request.Outpaint) and req.canvas[0] * req.canvas[1] > limits.max_image_pixels:
    raise BadRequest(f"canvas {req.canvas[0]}x{req.canvas[1]} is more than the "
                     f"{limits.max_image_pixels:,} pixels allowed (--max-image-pixels)", 413,
                     "canvas")
  for prompt in (*(getattr(req, "prompts", None) or ()), *filter(None, [req.negative_prompt])):
    tokens = count_tokens(prompt)
    if tokens > max_tokens:
      raise BadRequest(f"prompt too long: {tokens} tokens with the start and end tokens, the text "
                       f"encoder takes at most {max_tokens}: {prompt[:40]!r}...",
                       field="negative_prompt" if prompt == req.negative_prompt
                       else json_field(mode, "prompts"))
  images = {name: decode_image(name, body[name], limits.max_image_pixels)
            for name in IMAGES if name in body}
  return dataclasses.replace(req, **images)


def with_stored_images(req: request.Request, store) -> request.Request:
  """The request with its uploaded images written to `store` (an `InputStore`) and named by
  path, as its sidecars record them."""
  return dataclasses.replace(req, **{
      name: store.put(png_bytes(getattr(req, name))) for name in IMAGES
      if isinstance(getattr(req, name, None), np.ndarray)})


def sidecar(pipe, req: request.Request, prepared, index: int) -> dict:
  """The JSON sidecar of one image, as paella-sample writes it, with every path relative to
  the server's working directory (a response names no absolute path of the server's)."""
  record = sidecars.run_record(pipe, req, prepared.settings)
  record = _relative_paths(record)
  return sidecars.image_sidecar(record, index, prepared.labels[index])


def _relative_paths(record: dict) -> dict:
  relative = lambda path: os.path.relpath(path) if isinstance(path, str) and os.path.isabs(
      path) else path
  return {k: relative(v) if k.endswith("checkpoint") else v for k, v in record.items()} | {
      "request": {k: relative(v) if k in IMAGES else v for k, v in record["request"].items()},
      "lora": [dict(a, path=relative(a["path"])) for a in record["lora"]]}
