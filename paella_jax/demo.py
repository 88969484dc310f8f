"""The built-in demo's scoring: how well samples follow their scene prompts.

The demo (`python train.py` with no arguments, configs/demo.py; with Paella v3 as stage 2,
configs/demo_v3.py) is the pipeline of paella_jax/training/end_to_end.py over generated scenes
(data.source "scenes", paella_jax/data/scenes.py): the same stages as on a folder of your own
images. Its evaluation, here, samples every (colour, shape, position) prompt and reads the
samples back with the deterministic analyser (paella_jax/eval/adherence.py).
"""

from __future__ import annotations

import os

import numpy as np

from paella_jax.data.scenes import (COLOURS, POSITIONS, SHAPES, all_scenes, held_out_scenes,
                                    make_dataset)
from paella_jax.eval.adherence import score, score_seen_and_held_out
from paella_jax.images import make_grid, save_png

CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS),
          "all": 1 / (len(COLOURS) * len(SHAPES) * len(POSITIONS))}


def evaluate(config, pipe, codec, workdir: str) -> dict:
  """Samples every prompt through the pipeline (`eval.samples_per_prompt` images each; the
  held-out prompts `eval.held_out_samples_per_prompt`), decodes, analyses: scores for seen and
  held-out combinations, for the dataset's own images and for the VQGAN's reconstructions of
  512 of them (the ceiling). The grid shows the first sample of every prompt."""
  images, scenes = make_dataset(config.data.num_images, config.data.seed)
  n = config.eval.samples_per_prompt
  n_held = config.eval.get("held_out_samples_per_prompt", n)
  prompts = all_scenes()
  result = pipe.generate([p.caption for p in prompts], num_images=n, seed=config.seed + 1)
  samples, targets = result.images, [p for p in prompts for _ in range(n)]
  save_png(os.path.join(workdir, "samples", "grid.png"), make_grid(samples[::n], columns=12))
  if n_held > n:  # more samples of the held-out prompts, from their own noise stream
    held = held_out_scenes()
    extra = pipe.generate([p.caption for p in held], num_images=n_held - n, seed=config.seed + 2)
    samples = np.concatenate([samples, extra.images])
    targets += [p for p in held for _ in range(n_held - n)]
  return {**score_seen_and_held_out(samples, targets), "samples_per_prompt": n,
          "held_out_samples_per_prompt": max(n, n_held),
          "dataset_analyser_check": score(images, scenes),
          "vqgan_reconstruction": score(codec.decode(codec.encode(images[:512])), scenes[:512]),
          "chance": CHANCE}


def adherence_table(report: dict) -> str:
  """The report's adherence scores as a small table."""
  lines = ["prompt adherence    colour  shape  position  all"]
  for name in ("seen", "held_out"):
    r = report[name]
    lines.append(f"  {name:<16}  {r['colour']:6.1%} {r['shape']:6.1%}  {r['position']:7.1%} "
                 f"{r['all']:5.1%}   ({r['count']} images)")
  return "\n".join(lines)
