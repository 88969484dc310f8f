"""Image files: float images in [0, 1] to PNG files and grids."""

from __future__ import annotations

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
