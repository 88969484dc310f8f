"""A config's `data` section read into memory: stage 1's training images, and a few captions.

    source = open_data(config.data)                          # a Source (paella_jax.data.sources)
    images = stage1_images(config.data, size=32)              # (N, 32, 32, 3) float32 in [0, 1]
    captions = pick_captions(source, 8)                       # 8 captions spread over the source

`data.source` is "images" (`data.path`: a folder, an index, .tar shards or "tfds:NAME", as
paella-prepare reads) or "scenes" (the demo's generated scenes: `data.num_images` of them drawn
with `data.seed`, of `data.shapes`, default the demo's three). Stage 1 holds its images in
memory as float32: 12 KB per 32x32 image, 768 KB per 256x256 one.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging

import numpy as np

from paella_jax.data.decode import BadInput, decode_caption, decode_image, example_rng, resize_crop
from paella_jax.data.sources import Source, open_source

log = logging.getLogger("paella_jax.data")
SOURCES = ("images", "scenes")


def open_data(data) -> Source:
  """The Source of a `data` section: its images with their captions."""
  if data.source == "scenes":
    from paella_jax.data.sources import memory_source
    from paella_jax.images import to_uint8
    images, scenes = _scenes(data)
    return memory_source(to_uint8(images), [s.caption for s in scenes])
  if data.source != "images":
    raise ValueError(f"unknown data.source {data.source!r} (one of {', '.join(SOURCES)})")
  if not data.path:
    raise ValueError("data.path is empty: pass --config.data.path=FOLDER (a folder of images "
                     "with captions, an index file, .tar shards or tfds:NAME)")
  return open_source(data.path, split=data.get("split", "train"),
                     image_key=data.get("image_key", "image"),
                     caption_key=data.get("caption_key") or None,
                     path_column=data.get("path_column") or None)


def _scenes(data, size: int | None = None):
  """The "scenes" source's (images (N, size, size, 3) float32 in [0, 1], their scenes)."""
  from paella_jax.data import scenes
  shapes = tuple(data.get("shapes") or scenes.SHAPES)
  return scenes.make_dataset(data.num_images, data.seed, scenes.training_scenes(shapes),
                             size=size or scenes.IMAGE_SIZE)


def stage1_images(data, size: int) -> np.ndarray:
  """Every usable image of `data` as (N, size, size, 3) float32 in [0, 1]: the scenes as drawn,
  or each image's shorter side resized to `size` and cropped (`data.crop`, fixed per image by
  `data.seed`). Unreadable or too small (< size / 2) images are skipped and counted in the log;
  raises ValueError when none is left."""
  if data.source == "scenes":
    return _scenes(data, size)[0]
  source = open_data(data)

  def load(shard, i):
    example = shard[i]
    try:
      image = decode_image(example.image, min_size=size // 2)
      return resize_crop(image, size, data.crop, example_rng(data.seed, example.key))
    except BadInput as e:
      return e
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    loaded = list(pool.map(lambda job: load(*job),
                           [(shard, i) for shard in source.shards for i in range(len(shard))]))
  skipped = collections.Counter(x.reason for x in loaded if isinstance(x, BadInput))
  images = [x for x in loaded if not isinstance(x, BadInput)]
  if skipped:
    log.warning("stage 1 images of %s: skipped %s", data.path, dict(skipped))
  if not images:
    raise ValueError(f"no usable image in {data.path} (skipped {dict(skipped)})")
  return np.stack(images).astype(np.float32) / 255.0


def pick_captions(source: Source, count: int) -> list[str]:
  """Up to `count` distinct usable captions at evenly spaced positions of `source`."""
  positions = [(shard, i) for shard in source.shards for i in range(len(shard))]
  captions: list[str] = []
  for j in np.linspace(0, len(positions) - 1, min(len(positions), 4 * count)).round():
    shard, i = positions[int(j)]
    try:
      caption = decode_caption(shard[i].caption)
    except BadInput:
      continue
    if caption not in captions:
      captions.append(caption)
  if not captions:
    raise ValueError(f"no usable caption in {source.description}")
  return captions[::max(1, len(captions) // count)][:count]
