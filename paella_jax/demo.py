"""The built-in demo, end to end on CPU: data -> VQGAN (stage 1) -> encode -> Paella (stage 2)
-> samples -> prompt-adherence report. Run by `python train.py` with no arguments; with Paella v3
as stage 2 (config.paella.kind "paella_v3", configs/demo_v3.py) by
`python train.py --config configs/demo_v3.py`.

Writes into WORKDIR:
  vqgan/        stage 1: checkpoints, logs, TensorBoard; vqgan/model the VQGAN
  clip/         the tiny random CLIP (seeded, frozen)
  byt5/         v3: the tiny random ByT5 encoder (seeded, frozen; the train step runs it too)
  data/         the dataset prepared by the real data path (paella_jax.data.prepare): ArrayRecord
                shards of tokens (8, 8) + caption embeddings (32,) and a manifest (v3: CLIP
                text and image embeddings and the captions' ByT5 byte ids)
  paella/       stage-2 checkpoints, logs, TensorBoard; paella/model the sampler's checkpoint
  samples/grid.png, report.json   samples for every prompt, adherence scores
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from paella_jax.encoders.clip import ClipEncoder, random_clip, save_clip
from paella_jax.encoders.vq import VQGANCodec
from paella_jax.data.prepare import Preparer, V3Preparer
from paella_jax.data.scenes import (COLOURS, POSITIONS, SHAPES, all_scenes, held_out_scenes,
                                    make_dataset, training_scenes)
from paella_jax.eval.adherence import score, score_seen_and_held_out
from paella_jax.data.sources import memory_source
from paella_jax.images import make_grid, save_png, to_uint8
from paella_jax.training.loop import exported_weights, train as train_paella
from paella_jax.training.vqgan_loop import train_vqgan

CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS),
          "all": 1 / (len(COLOURS) * len(SHAPES) * len(POSITIONS))}


class _Stopwatch:
  """Minutes spent per named stage, in the order they ran."""

  def __init__(self):
    self.minutes, self._last = {}, time.perf_counter()

  def lap(self, stage: str) -> None:
    now = time.perf_counter()
    self.minutes[stage] = round((now - self._last) / 60, 2)
    self._last = now


def run(config, workdir: str = "runs/demo", progress: bool = True) -> dict:
  """Runs every stage; returns (and writes to WORKDIR/report.json) the adherence report."""
  t0, clock = time.perf_counter(), _Stopwatch()
  os.makedirs(workdir, exist_ok=True)
  images, scenes = make_dataset(config.num_images, config.seed, training_scenes())
  captions = [s.caption for s in scenes]
  data_check = score(images, scenes)
  clock.lap("data")

  vq, vq_state = train_vqgan(config.vqgan, images, os.path.join(workdir, "vqgan"), progress)
  codec = VQGANCodec(vq, vq_state.params, batch_size=256)
  reconstruction = score(codec.decode(codec.encode(images[:512])), scenes[:512])
  clock.lap("vqgan")

  clip_model, clip_params, tokenizer = random_clip(config.clip.model, seed=config.clip.seed)
  save_clip(os.path.join(workdir, "clip"), clip_model, clip_params, tokenizer, overwrite=True,
            meta={"random_weights": True})
  encoder = ClipEncoder(clip_model, clip_params, tokenizer, batch_size=256)
  v3 = config.paella.get("kind", "paella_v1") == "paella_v3"
  byt5 = _random_byt5(config.paella.byt5, os.path.join(workdir, "byt5")) if v3 else None
  data_dir = os.path.join(workdir, "data")
  shutil.rmtree(data_dir, ignore_errors=True)
  options = dict(size=images.shape[1], crop="center", batch_size=256)
  preparer = (V3Preparer(codec, encoder, byt5_max_length=max(config.paella.data.byt5_buckets),
                         **options) if v3 else Preparer(codec, encoder, **options))
  preparer.run(memory_source(to_uint8(images), captions), data_dir, progress=progress)
  clock.lap("prepare")
  paella_cfg = config.paella
  paella_cfg.data.path = data_dir  # configs/demo.py reads "records"
  # The exported model names the demo's encoders, so sample.py needs no flags.
  paella_cfg.export.update(clip_checkpoint="../../clip", vqgan_checkpoint="../../vqgan/model")
  if v3:
    paella_cfg.export.byt5_checkpoint = "../../byt5"
  paella_dir = os.path.join(workdir, "paella")
  state = train_paella(paella_cfg, paella_dir, progress=progress)
  clock.lap("paella")

  report = evaluate(config, exported_weights(state, paella_cfg), encoder, codec, workdir, byt5)
  clock.lap("evaluate")
  report.update(dataset_analyser_check=data_check, vqgan_reconstruction=reconstruction,
                chance=CHANCE, minutes=(time.perf_counter() - t0) / 60,
                stage_minutes=clock.minutes)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def _random_byt5(config, out_dir: str):
  """The ByT5 encoder of `config` (configs/t5_tiny.py) with its RANDOM seeded weights, the
  ones the v3 train step builds from the same config, saved to `out_dir` for sample.py."""
  from paella_jax.encoders.byt5 import ByT5Encoder, random_t5_encoder, save_t5_encoder
  model, params, tokenizer = random_t5_encoder(config.model, seed=config.seed)
  save_t5_encoder(out_dir, model, params, tokenizer, meta={"random_weights": True},
                  overwrite=True)
  return ByT5Encoder(model, params, tokenizer, pad_multiple=config.pad_multiple,
                     masked=config.masked)


def evaluate(config, params, encoder, codec, workdir: str, byt5_encoder=None) -> dict:
  """Samples every prompt through the pipeline (`eval_samples_per_prompt` images each; the
  held-out prompts `eval_held_out_samples_per_prompt`), decodes, analyses: scores for seen and
  held-out combinations. The grid shows the first sample of every prompt."""
  from paella_jax.pipeline import FAMILIES, Pipeline
  kind = config.paella.get("kind", "paella_v1")
  pipe = Pipeline(FAMILIES[kind].build(config.paella.model), params, kind=kind,
                  sampling=config.paella.sampling.to_dict(),
                  latent_shape=config.paella.latent_shape, text_encoder=encoder, codec=codec,
                  byt5_encoder=byt5_encoder)
  n = config.eval_samples_per_prompt
  n_held = config.get("eval_held_out_samples_per_prompt", n)
  prompts = all_scenes()
  result = pipe.generate([p.caption for p in prompts], num_images=n, seed=config.seed + 1)
  images, targets = result.images, [p for p in prompts for _ in range(n)]
  save_png(os.path.join(workdir, "samples", "grid.png"), make_grid(images[::n], columns=12))
  if n_held > n:  # more samples of the held-out prompts, from their own noise stream
    held = held_out_scenes()
    extra = pipe.generate([p.caption for p in held], num_images=n_held - n, seed=config.seed + 2)
    images = np.concatenate([images, extra.images])
    targets += [p for p in held for _ in range(n_held - n)]
  return {**score_seen_and_held_out(images, targets), "samples_per_prompt": n,
          "held_out_samples_per_prompt": max(n, n_held)}
