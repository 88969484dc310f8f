"""The built-in demo's scoring: how well samples follow their scene prompts.

The demo (`python train.py` with no arguments, configs/demo.py; with Paella v3 as stage 2,
configs/demo_v3.py) is the pipeline of paella_jax/training/end_to_end.py over generated scenes
(data.source "scenes", paella_jax/data/scenes.py): the same stages as on a folder of your own
images. Its evaluation, here, is paella-eval's on the demo's scenes: every (colour, shape,
position) prompt sampled and read back with the deterministic analyser
(paella_jax/eval/adherence.py).
"""

from __future__ import annotations

import os

from paella_jax.data.scenes import (COLOURS, POSITIONS, SHAPES, all_scenes, held_out_scenes,
                                    make_dataset)
from paella_jax.eval.adherence import score
from paella_jax.eval.data import scene_data
from paella_jax.eval.run import Generator, evaluate as run_evaluation
from paella_jax.images import make_grid, save_png

EVAL_BATCH = 256  # rows per sampler call
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS),
          "all": 1 / (len(COLOURS) * len(SHAPES) * len(POSITIONS))}


def evaluate(config, pipe, codec, workdir: str) -> dict:
  """paella-eval's evaluation (`paella_jax.eval.run.evaluate`) of every prompt
  (`eval.samples_per_prompt` samples each; the held-out prompts
  `eval.held_out_samples_per_prompt`): adherence for seen and held-out combinations, with the
  analyser's scores of the dataset's own images and of the VQGAN's reconstructions of 512 of
  them (the ceiling). The grid shows the first sample of every prompt."""
  images, scenes = make_dataset(config.data.num_images, config.data.seed)
  n = config.eval.samples_per_prompt
  n_held = max(n, config.eval.get("held_out_samples_per_prompt", n))
  held = set(held_out_scenes())
  targets = [p for p in all_scenes() for _ in range(n_held if p in held else n)]
  gen = Generator(pipe, batch_size=min(EVAL_BATCH, len(targets)), seed=config.seed + 1)
  ((result, samples),) = run_evaluation(gen, scene_data(targets, config.data.seed, "demo-eval"),
                                        [gen.settings.cfg])
  first = [targets.index(p) for p in all_scenes()]
  save_png(os.path.join(workdir, "samples", "grid.png"), make_grid(samples[first], columns=12))
  return {**result["adherence"], "samples_per_prompt": n, "held_out_samples_per_prompt": n_held,
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
