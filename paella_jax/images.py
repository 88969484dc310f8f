"""Image files: reading any image PIL reads (EXIF orientation applied, size checked from the
header), float images in [0, 1] to PNG files and grids."""

from __future__ import annotations

import io
import math
import os

import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
  """(H, W, 3) float in [0, 1] -> uint8 (values outside are clipped)."""
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> str:
  """Writes one (H, W, 3) float image in [0, 1] as a PNG; returns the path."""
  from PIL import Image
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(to_uint8(image)).save(path)
  return path


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
  """(N, H, W, 3) -> one (rows*(H+p)+p, cols*(W+p)+p, 3) image on a white background."""
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + padding) + padding, columns * (w + padding) + padding, c),
                 np.float32)
  for i, image in enumerate(images):
    top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


EXIF_ORIENTATION = 0x0112


def upright(image):
  """A PIL image turned as its EXIF Orientation tag says (a phone photo taken sideways), or the
  image itself when it has none."""
  from PIL import ImageOps
  if image.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
    return image
  return ImageOps.exif_transpose(image)


def pil_to_rgb(image) -> np.ndarray:
  """Any PIL image -> (H, W, 3) uint8, upright (EXIF orientation applied); alpha composited onto
  white, 16/32-bit rescaled."""
  from PIL import Image
  image = upright(image)
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    values = np.asarray(image, np.float64)
    scale = 255.0 / 65535.0 if image.mode != "F" and values.max() > 255 else 1.0
    if image.mode == "F" and values.max() <= 1.0:
      scale = 255.0
    grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image)
  return np.asarray(image.convert("RGB"), np.uint8)


def decode_image_bytes(data: bytes, max_pixels: int | None = None) -> np.ndarray:
  """Encoded image bytes (any format PIL reads) -> (H, W, 3) uint8 RGB, upright.

  With `max_pixels`, an image whose header declares more pixels is refused before any pixel is
  decoded (a small PNG can declare 12000x12000). Raises ValueError saying what is wrong with
  the image ("is not an image file ...", "is 12000x12000 = ... pixels, more than ...").
  """
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"is {width}x{height} = {width * height:,} pixels, more than the "
                         f"{max_pixels:,} allowed")
      image.load()
      return pil_to_rgb(image)
  except UnidentifiedImageError:
    raise ValueError("is not an image file PIL can read (PNG, JPEG, ...)") from None
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"does not decode as an image: {e}") from None


def load_image(path: str) -> np.ndarray:
  """Reads an image file as (H, W, 3) float32 RGB in [0, 1] (any mode, see `pil_to_rgb`).

  Raises FileNotFoundError or ValueError naming the file.
  """
  from PIL import Image, UnidentifiedImageError
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  try:
    with Image.open(path) as image:
      image.load()
      return pil_to_rgb(image).astype(np.float32) / 255.0
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ValueError(f"{path} is not a readable image (corrupt or truncated?): {e}") from e


def save_gif(path: str, frames: np.ndarray, duration_ms: int = 200) -> str:
  """Writes (N, H, W, 3) float frames in [0, 1] as a looping animated GIF."""
  from PIL import Image
  images = [Image.fromarray(to_uint8(f)) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
  return path
