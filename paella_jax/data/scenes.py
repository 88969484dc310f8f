"""The built-in demo dataset: captioned scenes of one coloured shape, generated from a seed.

Each 32x32 image shows one shape (circle, square, triangle) in one of six colours in one of four
quadrants on a light grey background, captioned "a red circle in the top left". A few
(colour, shape, position) combinations are held out of training entirely, to measure whether
the model composes attributes it has only seen apart. NEW_SHAPES are drawn and recognised but
never trained on by the demo: the concepts a fine-tuning run can teach it (docs/finetune.md).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np

IMAGE_SIZE = 32
BACKGROUND = np.array([0.92, 0.92, 0.92], np.float32)
COLOURS = {
    "red": (0.85, 0.10, 0.10), "green": (0.10, 0.65, 0.15), "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.55, 0.10, 0.75), "black": (0.10, 0.10, 0.10),
}
SHAPES = ("circle", "square", "triangle")
NEW_SHAPES = ("rectangle",)  # a wide bar, 2.6 times as wide as high: not in the demo's data
POSITIONS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0),
             "bottom right": (1, 1)}  # (row, column) of the quadrant
HELD_OUT = (("red", "triangle", "bottom right"), ("blue", "circle", "top left"),
            ("green", "square", "bottom left"), ("yellow", "triangle", "top right"))


class Scene(NamedTuple):
  colour: str
  shape: str
  position: str

  @property
  def caption(self) -> str:
    return f"a {self.colour} {self.shape} in the {self.position}"


def all_scenes() -> list[Scene]:
  """The demo's 72 scenes (SHAPES only)."""
  return shape_scenes(SHAPES)


def shape_scenes(shapes: Sequence[str]) -> list[Scene]:
  """Every (colour, shape, position) scene of the given shapes (of SHAPES + NEW_SHAPES)."""
  unknown = [s for s in shapes if s not in SHAPES + NEW_SHAPES]
  if unknown or not shapes:
    raise ValueError(f"unknown shape(s) {', '.join(unknown) or '(none given)'}: the scenes draw "
                     f"{', '.join(SHAPES + NEW_SHAPES)}")
  return [Scene(*c) for c in itertools.product(COLOURS, shapes, POSITIONS)]


def training_scenes(shapes: Sequence[str] = SHAPES) -> list[Scene]:
  """The scenes of `shapes` a training set draws: every combination but the held-out ones."""
  return [s for s in shape_scenes(shapes) if tuple(s) not in HELD_OUT]


def held_out_scenes() -> list[Scene]:
  return [Scene(*c) for c in HELD_OUT]


def draw(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
  """One (size, size, 3) float32 image in [0, 1]: the shape, jittered in size and place."""
  row, col = POSITIONS[scene.position]
  half = rng.uniform(0.14, 0.19) * size                   # half-extent of the shape
  cy = (row + 0.5) * size / 2 + rng.uniform(-0.04, 0.04) * size
  cx = (col + 0.5) * size / 2 + rng.uniform(-0.04, 0.04) * size
  y, x = np.mgrid[0:size, 0:size] + 0.5
  dy, dx = y - cy, x - cx
  if scene.shape == "circle":
    inside = dy ** 2 + dx ** 2 <= half ** 2
  elif scene.shape == "square":
    inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
  elif scene.shape == "rectangle":
    inside = (np.abs(dy) <= 0.5 * half) & (np.abs(dx) <= 1.3 * half)
  else:  # an upward triangle: apex at the top, base at the bottom of the box
    inside = (dy <= half) & (dy >= -half) & (np.abs(dx) <= (dy + half) / 2)
  image = np.broadcast_to(BACKGROUND, (size, size, 3)).copy()
  image[inside] = COLOURS[scene.colour]
  return image


def make_dataset(num_images: int, seed: int = 0, scenes: Sequence[Scene] | None = None,
                 size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Scene]]:
  """(images (N, size, size, 3) float32 in [0, 1], their scenes), the scenes cycled over
  `scenes` (default: the training combinations) in a seeded random order."""
  rng = np.random.default_rng(seed)
  scenes = scenes or training_scenes()
  chosen = [scenes[i] for i in rng.permutation(np.arange(num_images) % len(scenes))]
  return np.stack([draw(s, rng, size) for s in chosen]), chosen
