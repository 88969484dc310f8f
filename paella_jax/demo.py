"""The built-in demo, end to end on CPU: data -> VQGAN (stage 1) -> encode -> Paella (stage 2)
-> samples -> prompt-adherence report. Run by `python train.py` with no arguments.

Writes into WORKDIR:
  vqgan/        stage 1: checkpoints, logs, TensorBoard; vqgan/model the VQGAN
  clip/         the tiny random text tower (seeded, frozen)
  data/         the dataset prepared by the real data path (paella_jax.data.prepare): ArrayRecord
                shards of tokens (8, 8) + caption embeddings (32,) and a manifest
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
from paella_jax.data.prepare import Preparer
from paella_jax.data.scenes import (COLOURS, POSITIONS, SHAPES, all_scenes, held_out_scenes,
                                    make_dataset, training_scenes)
from paella_jax.eval.adherence import score, score_seen_and_held_out
from paella_jax.data.sources import memory_source
from paella_jax.images import make_grid, save_png, to_uint8
from paella_jax.training.loop import train as train_paella
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
  data_dir = os.path.join(workdir, "data")
  shutil.rmtree(data_dir, ignore_errors=True)
  Preparer(codec, encoder, size=images.shape[1], crop="center", batch_size=256).run(
      memory_source(to_uint8(images), captions), data_dir, progress=progress)
  clock.lap("prepare")
  paella_cfg = config.paella
  paella_cfg.data.path = data_dir  # configs/demo.py reads "records"
  # The exported model names the demo's encoders, so sample.py needs no flags.
  paella_cfg.export.update(clip_checkpoint="../../clip", vqgan_checkpoint="../../vqgan/model")
  paella_dir = os.path.join(workdir, "paella")
  state = train_paella(paella_cfg, paella_dir, progress=progress)
  clock.lap("paella")

  report = evaluate(config, state.params, encoder, codec, workdir)
  clock.lap("evaluate")
  report.update(dataset_analyser_check=data_check, vqgan_reconstruction=reconstruction,
                chance=CHANCE, minutes=(time.perf_counter() - t0) / 60,
                stage_minutes=clock.minutes)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def evaluate(config, params, encoder, codec, workdir: str) -> dict:
  """Samples every prompt through the pipeline (`eval_samples_per_prompt` images each; the
  held-out prompts `eval_held_out_samples_per_prompt`), decodes, analyses: scores for seen and
  held-out combinations. The grid shows the first sample of every prompt."""
  from paella_jax.models.paella import build_model
  from paella_jax.pipeline import Pipeline
  pipe = Pipeline(build_model(config.paella.model), params, sampling=config.paella.sampling.to_dict(),
                  latent_shape=config.paella.latent_shape, text_encoder=encoder, codec=codec)
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
