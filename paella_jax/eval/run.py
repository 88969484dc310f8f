"""Zero-shot FID, CLIP score and (for the demo's scenes) prompt adherence of a pipeline.

    results = evaluate(pipe, data, cfgs=[3, 5], batch_size=256, seed=0,
                       features=inception_features(...), reference=(mu, sigma), scorer=scorer)

For each guidance weight: the data's captions -> typed generation requests (`paella_jax.request`,
so both model families: v1's CLIP embeddings, v3's ByT5 and CLIP rows guided against the empty
prompt) -> the sampler (batches of `batch_size` sharded over the local devices, the last one
padded, so each compiles once) -> VQGAN decode -> images rounded to 8 bits (as if saved as PNGs)
-> Inception pool features (FID against the references' statistics), CLIP score, and for the
demo's scenes the adherence analyser. The same seed gives every weight the same noise.
paella-eval (paella_jax/commands/eval.py) and the demo's evaluation (paella_jax/demo.py) run it.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Callable, Sequence

import numpy as np

from paella_jax import request
from paella_jax.eval.adherence import score_by_split
from paella_jax.families import map_rows, pad_rows
from paella_jax.images import to_uint8


def cfg_name(cfg) -> str:
  """A guidance setting in file names and messages: 5, 8-4 (a schedule), off."""
  if cfg is None or cfg == "off":
    return "off"
  return "-".join(f"{c:g}" for c in cfg) if isinstance(cfg, (tuple, list)) else f"{cfg:g}"


class Generator:
  """captions, cfg, batch index -> images (N, H, W, 3) float32 in [0, 1] on the 8-bit grid.

  `settings`: sampler overrides for every batch (steps, typical_mass, ...). Batch `index` draws
  from fold_in(key(seed), index); `batch_size` rows per call (at most that many captions)."""

  def __init__(self, pipe, batch_size: int, seed: int = 0, settings: dict | None = None):
    import jax
    self.pipe, self.batch_size, self.seed = pipe, batch_size, seed
    self.overrides = dict(settings or {})
    self.settings = pipe.settings("generate", **self.overrides)
    self.key = jax.random.key(seed)

  @property
  def image_size(self) -> int:
    return self.pipe.latent_shape[0] * self.pipe.codec.module.factor

  def __call__(self, captions: Sequence[str], cfg, index: int) -> np.ndarray:
    import jax
    req = request.Generate(prompts=tuple(captions), seed=self.seed,
                           settings={**self.overrides, "cfg": cfg})
    prepared = self.pipe.prepare(req)
    pad = lambda rows: map_rows(lambda a: pad_rows(a, self.batch_size), rows)
    codes = self.pipe.sample(pad(prepared.cond), jax.random.fold_in(self.key, index),
                             prepared.settings, latent_shape=prepared.inputs["latent_shape"],
                             uncond=None if prepared.uncond is None else pad(prepared.uncond))
    images = self.pipe.decode(codes)[:len(captions)]
    return to_uint8(images).astype(np.float32) / 255


def inception_id(module, params) -> str:
  """Names an Inception (its input size and a digest of two kernels) in cache file names."""
  digest = hashlib.sha1(np.asarray(params["Conv2d_1a_3x3"]["kernel"]).tobytes()
                        + np.asarray(params["Mixed_7c"]["branch_pool"]["kernel"]).tobytes())
  return f"inception{module.resize_to}-{digest.hexdigest()[:10]}"


def reference_stats(data, features: Callable, image_size: int, batch_size: int, cache_dir: str,
                    inception: str, progress: bool = False) -> tuple:
  """(mu, sigma, path) of the data's reference images, from the cache folder or computed and
  cached there."""
  from tqdm.auto import tqdm
  from paella_jax.eval.fid import GaussianStats, load_stats, save_stats
  path = os.path.join(cache_dir, f"{data.name}-{image_size}px-{inception}.npz")
  if os.path.isfile(path):
    return (*load_stats(path), path)
  stats = GaussianStats()
  batches = data.references(image_size, batch_size)
  total = -(-len(data.captions) // batch_size)
  for batch in tqdm(batches, total=total, desc="reference statistics", disable=not progress):
    stats.update(features(batch.astype(np.float32) / 255))
  mu, sigma = stats.mean_cov()
  save_stats(path, mu, sigma, images=stats.n)
  return mu, sigma, path


def evaluate(gen: Generator, data, cfgs: Sequence, *, features: Callable | None = None,
             reference: tuple | None = None, scorer: Callable | None = None,
             progress: bool = False, report: Callable[[dict], None] = lambda result: None
             ) -> list[tuple[dict, np.ndarray]]:
  """(result, kept images) per guidance weight in `cfgs` (a number, a (start, end) schedule or
  "off"): seconds, first-batch seconds (the compile), images per second, and with `features`
  and `reference` (mu, sigma) the FID, with `scorer` the CLIP score, for the demo's scenes
  (data.scenes) the adherence. Kept images: all of them for the scenes, else the first batch.
  `report(result)` is called as each weight finishes."""
  from tqdm.auto import tqdm
  from paella_jax.eval.fid import GaussianStats, frechet_distance
  num, out = len(data.captions), []
  for cfg in cfgs:
    stats, clip_scores, kept, times = GaussianStats(), [], [], [time.perf_counter()]
    for index, start in enumerate(tqdm(range(0, num, gen.batch_size), desc=f"cfg {cfg_name(cfg)}",
                                       disable=not progress)):
      captions = data.captions[start:start + gen.batch_size]
      images = gen(captions, cfg, index)
      if features is not None:
        stats.update(features(images))
      if scorer is not None:
        clip_scores.append(scorer(images, captions))
      if data.scenes is not None or index == 0:
        kept.append(images)
      times.append(time.perf_counter())
    kept = np.concatenate(kept)
    result = {"cfg": list(cfg) if isinstance(cfg, tuple) else cfg,
              "seconds": round(times[-1] - times[0], 2),
              "first_batch_seconds": round(times[1] - times[0], 2)}   # compiles, first weight
    if len(times) > 2:    # steady state: every batch after the first (all full but the last)
      result["images_per_second"] = round((num - gen.batch_size) / (times[-1] - times[1]), 2)
    if features is not None:
      result["fid"] = frechet_distance(*stats.mean_cov(), reference[0], reference[1])
    if scorer is not None:
      result["clip_score"] = float(np.concatenate(clip_scores).mean())
    if data.scenes is not None:
      result["adherence"] = score_by_split(kept, data.scenes)
    report(result)
    out.append((result, kept))
  return out
