"""Raw inputs -> training inputs: image bytes to RGB uint8, caption bytes to text, resize + crop.

Unusable inputs raise `BadInput` with a short reason (the manifest counts skipped examples per
reason): "missing_image", "missing_caption", "corrupt_image", "image_too_small",
"empty_caption", "caption_not_utf8". Odd but usable images are converted, not skipped: CMYK,
greyscale, palette, 16-bit and alpha (composited onto white) images all come out as RGB uint8.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from paella_jax.images import decode_image_bytes, pil_to_rgb

REASONS = ("missing_image", "missing_caption", "corrupt_image", "image_too_small",
           "empty_caption", "caption_not_utf8")


class BadInput(ValueError):
  """An example that cannot be used; `reason` is one of REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def decode_image(data: bytes | np.ndarray | None, min_size: int = 1) -> np.ndarray:
  """Encoded image bytes (any format PIL reads), or a decoded (H, W[, C]) uint8/uint16 array as
  tfds gives, -> (H, W, 3) uint8 RGB.

  Raises BadInput("missing_image") for None, ("corrupt_image") for unreadable or truncated
  data, ("image_too_small") when the shorter side is below `min_size`.
  """
  from PIL import Image
  if data is None:
    raise BadInput("missing_image")
  try:
    if isinstance(data, np.ndarray):
      array = pil_to_rgb(Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[2] == 1
                                      else data))
    else:
      array = decode_image_bytes(data)
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, bombs...)
    raise BadInput("corrupt_image", f"{type(e).__name__}: {e}") from None
  if min(array.shape[:2]) < min_size:
    raise BadInput("image_too_small", f"{array.shape[1]}x{array.shape[0]} < {min_size}")
  return array


def decode_caption(data: bytes | str | None, json_key: str = "caption") -> str:
  """Caption bytes (UTF-8 text, or a JSON object holding `json_key`) -> stripped text.

  Raises BadInput("missing_caption"), ("caption_not_utf8") or ("empty_caption").
  """
  if data is None:
    raise BadInput("missing_caption")
  if isinstance(data, bytes):
    try:
      data = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadInput("caption_not_utf8", str(e)) from None
  text = data.strip()
  if text.startswith("{"):
    try:
      text = str(json.loads(text).get(json_key) or "").strip()
    except (json.JSONDecodeError, AttributeError):
      pass
  if not text:
    raise BadInput("empty_caption")
  return text


def resize_crop(image: np.ndarray, size: int, crop: str = "random",
                rng: np.random.Generator | None = None) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8: the shorter side resized to `size` (bicubic,
  antialiased, as torchvision's Resize on PIL images), then a `crop` ("random" or "center")
  square of `size`."""
  from PIL import Image
  if crop not in ("random", "center"):
    raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_h, new_w) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
  if crop == "center":
    top, left = (new_h - size) // 2, (new_w - size) // 2
  else:
    rng = rng if rng is not None else np.random.default_rng()
    top, left = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
  return image[top:top + size, left:left + size]


def decode_example(example, size: int, crop: str, min_size: int,
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, str]:
  """A raw example (`.image` bytes or array, `.caption`) -> ((size, size, 3) uint8 crop,
  caption). Raises BadInput naming what is unusable; the caption is checked first."""
  caption = decode_caption(example.caption)
  image = decode_image(example.image, min_size)
  return resize_crop(image, size, crop, rng), caption


def example_rng(seed: int, key: str) -> np.random.Generator:
  """A generator fixed by (seed, example key): crops are the same on every run and resume."""
  return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
