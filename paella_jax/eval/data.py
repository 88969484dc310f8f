"""Evaluation prompts and their reference images: COCO captions (a folder or tfds) or the demo.

    data = open_eval_data("coco/", num_samples=30000, seed=0)   # or "tfds:coco_captions", "demo"
    data.captions                    # num_samples prompts
    for batch in data.references(256, batch_size=200): ...   # (B, 256, 256, 3) uint8

COCO (zero-shot FID, as in the paper): `num_samples` distinct images drawn at random (seeded)
from the split, one of each image's captions drawn at random; the references are those images,
the shorter side resized to the generated size (bicubic, antialiased) and center-cropped.
A COCO folder is a captions json (`annotations/captions_val2014.json`) with its image folder
(`val2014/`, beside `annotations/`, or given as `images_dir`); a directory holding both works too.
The demo: its 72 scene prompts ("demo"), or every prompt of the named shapes ("demo:rectangle",
"demo:circle,rectangle"; NEW_SHAPES included), cycled to `num_samples`, references drawn by
`scenes.draw`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import json
import os
from typing import Callable, Iterator

import numpy as np

from paella_jax.data.decode import decode_image, resize_crop
from paella_jax.data.scenes import SHAPES, Scene, draw, shape_scenes


@dataclasses.dataclass
class EvalData:
  """name: identifies the prompts and references (cache keys); captions: one prompt per sample;
  load(i, size): reference image i as (size, size, 3) uint8; scenes: the demo's targets."""
  name: str
  captions: list[str]
  load: Callable[[int, int], np.ndarray]
  scenes: list[Scene] | None = None

  def references(self, size: int, batch_size: int, workers: int = 16) -> Iterator[np.ndarray]:
    """The reference images in batches (B, size, size, 3) uint8, decoded on `workers` threads."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for start in range(0, len(self.captions), batch_size):
        idx = range(start, min(start + batch_size, len(self.captions)))
        yield np.stack(list(pool.map(lambda i: self.load(i, size), idx)))


def _choose(num_images: int, num_samples: int, seed: int, what: str) -> np.ndarray:
  if num_samples > num_images:
    raise ValueError(f"{what} has {num_images} images; cannot draw {num_samples} distinct ones")
  return np.random.default_rng(seed).permutation(num_images)[:num_samples]


def _coco_paths(path: str, images_dir: str | None) -> tuple[str, str]:
  """(captions json, image folder) of a COCO folder or captions file."""
  if os.path.isdir(path):
    found = sorted(glob.glob(os.path.join(path, "annotations", "captions_val*.json"))
                   + glob.glob(os.path.join(path, "captions_val*.json")))
    if not found:
      raise FileNotFoundError(f"no annotations/captions_val*.json under {path}")
    path = found[0]                                   # val2014 (the paper's) before val2017
  if not os.path.isfile(path):
    raise FileNotFoundError(f"COCO captions file not found: {path}")
  if images_dir is None:
    split = os.path.splitext(os.path.basename(path))[0].split("_", 1)[-1]     # "val2014"
    images_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), split)
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"COCO image folder not found: {images_dir} (pass --images)")
  return path, images_dir


def coco_folder(path: str, num_samples: int, seed: int = 0,
                images_dir: str | None = None) -> EvalData:
  json_path, images_dir = _coco_paths(path, images_dir)
  with open(json_path) as f:
    coco = json.load(f)
  if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
    raise ValueError(f"{json_path} is not a COCO captions file (no 'images'/'annotations')")
  captions = collections.defaultdict(list)
  for a in coco["annotations"]:
    captions[a["image_id"]].append(a["caption"].strip())
  images = [im for im in coco["images"] if captions[im["id"]]]
  rng = np.random.default_rng([seed, 1])
  chosen = [images[i] for i in _choose(len(images), num_samples, seed, json_path)]
  texts = [captions[im["id"]][rng.integers(len(captions[im["id"]]))] for im in chosen]

  def load(i: int, size: int) -> np.ndarray:
    with open(os.path.join(images_dir, chosen[i]["file_name"]), "rb") as f:
      return resize_crop(decode_image(f.read()), size, crop="center")
  return EvalData(f"coco-{os.path.basename(json_path)}-n{num_samples}-s{seed}", texts, load)


def coco_tfds(name: str, split: str, num_samples: int, seed: int = 0,
              data_source=None) -> EvalData:
  """A tfds captions dataset (e.g. coco_captions, split val) through `tfds.data_source`, or an
  equivalent random-access `data_source` of {"image": uint8, "captions": {"text": [...]}}."""
  from paella_jax.data.sources import tfds_source
  source = tfds_source(name, split, caption_key="captions/text", data_source=data_source)
  positions = [(shard, i) for shard in source.shards for i in range(len(shard))]
  chosen = _choose(len(positions), num_samples, seed, f"tfds {name}:{split}")
  chosen = [positions[i] for i in chosen]

  def caption(example) -> str:
    text = example.caption
    return (text.decode("utf-8") if isinstance(text, bytes) else str(text)).strip()

  def load(i: int, size: int) -> np.ndarray:
    shard, j = chosen[i]
    return resize_crop(decode_image(shard[j].image), size, crop="center")
  texts = [caption(shard[j]) for shard, j in chosen]
  return EvalData(f"tfds-{name}-{split}-n{num_samples}-s{seed}", texts, load)


def scene_data(scenes: list[Scene], seed: int, name: str) -> EvalData:
  """The captions of demo scenes, one sample each; references drawn like the demo's dataset."""
  def load(i: int, size: int) -> np.ndarray:
    image = draw(scenes[i], np.random.default_rng([seed, i]), size=size)
    return np.round(image * 255).astype(np.uint8)
  return EvalData(name, [s.caption for s in scenes], load, scenes)


def demo_data(num_samples: int, seed: int = 0, shapes: tuple[str, ...] = SHAPES) -> EvalData:
  """Every scene prompt of `shapes` (the demo's 72 by default) cycled to `num_samples`."""
  prompts = shape_scenes(shapes)
  per_prompt = -(-num_samples // len(prompts))
  scenes = [s for s in prompts for _ in range(per_prompt)][:num_samples]
  name = "demo" if shapes == SHAPES else "demo-" + "-".join(shapes)
  return scene_data(scenes, seed, f"{name}-n{num_samples}-s{seed}")


def demo_shapes(spec: str) -> tuple[str, ...] | None:
  """The shapes a "demo[:SHAPE,...]" spec names (the demo's three for "demo"); None for another
  kind of spec."""
  kind, sep, shapes = spec.partition(":")
  if kind != "demo":
    return None
  return tuple(s.strip() for s in shapes.split(",")) if sep else SHAPES


def open_eval_data(spec: str, num_samples: int, seed: int = 0,
                   images_dir: str | None = None) -> EvalData:
  """"demo[:SHAPE,...]", "tfds:NAME[:SPLIT]" (split default val), or a COCO folder / captions
  json."""
  shapes = demo_shapes(spec)
  if shapes:
    return demo_data(num_samples, seed, shapes)
  if spec.startswith("tfds:"):
    name, _, split = spec[len("tfds:"):].partition(":")
    return coco_tfds(name, split or "val", num_samples, seed)
  return coco_folder(spec, num_samples, seed, images_dir)
