"""Procedurally drawn images of coloured shapes: the built-in demo data set (no downloads)."""

from __future__ import annotations

import numpy as np


PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.7, 0.2], [0.15, 0.3, 0.9], [0.95, 0.85, 0.1],
                    [0.6, 0.2, 0.8], [0.1, 0.8, 0.8], [0.95, 0.95, 0.95], [0.1, 0.1, 0.1]],
                   np.float32)


def draw_shapes(num_images: int, size: int = 32, seed: int = 0, max_shapes: int = 3
                ) -> np.ndarray:
  """Random discs, squares and triangles in `PALETTE` colours on plain backgrounds.

  Returns float32 images (num_images, size, size, 3) in [0, 1], reproducible from `seed`.
  """
  rng = np.random.default_rng(seed)
  yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
  images = np.empty((num_images, size, size, 3), np.float32)
  for i in range(num_images):
    image = np.broadcast_to(PALETTE[rng.integers(len(PALETTE))], (size, size, 3)).copy()
    for _ in range(rng.integers(1, max_shapes + 1)):
      cy, cx = rng.uniform(0.15, 0.85, 2)
      r = rng.uniform(0.1, 0.3)
      kind = rng.integers(3)
      if kind == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
      elif kind == 1:
        mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
      else:
        mask = (yy > cy - r) & (yy < cy + r) & (np.abs(xx - cx) < (yy - cy + r) / 2)
      image[mask] = PALETTE[rng.integers(len(PALETTE))]
    images[i] = image
  return images
