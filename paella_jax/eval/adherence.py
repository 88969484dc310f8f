"""Prompt adherence for the demo scenes: reads colour, shape and position back from an image.

A deterministic analyser, no learned model: the shape's pixels are those far from the
background; the colour is the palette entry nearest to their median; the position is the
quadrant of their centroid; the shape is told by how much of its bounding box it fills
(square ~1, circle ~pi/4, triangle ~1/2), unless it is much wider than high: the rectangle
of NEW_SHAPES (2.6 times as wide; the other shapes about 1).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from paella_jax.data.scenes import (BACKGROUND, COLOURS, NEW_SHAPES, POSITIONS, Scene,
                                    held_out_scenes)

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = list(COLOURS)
MIN_PIXELS = 6


def analyse(image: np.ndarray) -> Scene | None:
  """(H, W, 3) float in [0, 1] -> the Scene it shows, or None when no shape is found."""
  image = np.asarray(image, np.float32)
  foreground = np.linalg.norm(image - BACKGROUND, axis=-1) > 0.3
  if foreground.sum() < MIN_PIXELS:
    return None
  median = np.median(image[foreground], axis=0)
  colour = int(np.argmin(np.linalg.norm(_PALETTE - median, axis=-1)))
  # Keep only the pixels of the dominant colour, so stray blobs do not skew the geometry.
  shape_pixels = foreground & (np.linalg.norm(image - _PALETTE[colour], axis=-1) < 0.35)
  if shape_pixels.sum() < MIN_PIXELS:
    return None
  ys, xs = np.nonzero(shape_pixels)
  h, w = image.shape[:2]
  quadrant = (int(ys.mean() + 0.5 >= h / 2), int(xs.mean() + 0.5 >= w / 2))
  position = next(name for name, q in POSITIONS.items() if q == quadrant)
  height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
  fill = len(ys) / (height * width)
  if width > 1.5 * height:
    shape = "rectangle"
  else:
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
  return Scene(_NAMES[colour], shape, position)


def score(images: Iterable[np.ndarray], scenes: Iterable[Scene]) -> dict:
  """Accuracy of colour, shape, position and all three over images and their target scenes,
  the number of images ("count") and of correct ones per attribute ("correct")."""
  found = [analyse(image) for image in images]
  scenes = list(scenes)
  hits = {"colour": [], "shape": [], "position": [], "all": []}
  for f, s in zip(found, scenes):
    for key in ("colour", "shape", "position"):
      hits[key].append(f is not None and getattr(f, key) == getattr(s, key))
    hits["all"].append(f == s)
  return ({key: float(np.mean(v)) for key, v in hits.items()}
          | {"count": len(scenes), "correct": {key: int(np.sum(v)) for key, v in hits.items()}})


def score_by_split(images: np.ndarray, scenes: list[Scene]) -> dict[str, dict]:
  """`score` separately for the demo's training combinations ("seen"), the held-out ones and
  the scenes of NEW_SHAPES ("new_shapes", never in the demo's data); a split without images is
  left out."""
  held = set(held_out_scenes())
  split = {name: [] for name in ("seen", "held_out", "new_shapes")}
  for i, s in enumerate(scenes):
    split["new_shapes" if s.shape in NEW_SHAPES else "held_out" if s in held else "seen"].append(i)
  return {name: score(images[idx], [scenes[i] for i in idx]) for name, idx in split.items()
          if idx}
