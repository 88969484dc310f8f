"""The whole system, stage after stage: paella-train's `pipeline` job.

    report = run(config, workdir)   # configs/demo.py: generated scenes; configs/folder.py: yours

data (config.data, paella_jax/data/read.py) -> stage 1: the VQGAN (config.vqgan) -> the text
encoders (a CLIP with random seeded frozen weights, config.clip; v3: a random ByT5) -> the
records paella-prepare writes (tokens + caption embeddings) -> stage 2: the token predictor
(config.paella) -> samples and a report: the demo's prompt adherence (data.source "scenes",
paella_jax/demo.py), or samples of a few of the data's own captions ("images").

Writes into WORKDIR; a stage whose output exists is skipped (delete it to redo the stage), and an
interrupted stage resumes from its own checkpoints:
  vqgan/        stage 1: checkpoints, metrics.jsonl, TensorBoard; vqgan/model the VQGAN
  clip/         the random CLIP (byt5/: v3's random ByT5 encoder)
  data/         the prepared records and their manifest.json
  paella/       stage 2: checkpoints, metrics.jsonl, TensorBoard; paella/model the model that
                `paella-sample --checkpoint WORKDIR/paella/model` samples with no more flags
  samples/grid.png, report.json   (rerun every time: samples, stage minutes, last metrics)
"""

from __future__ import annotations

import json
import os
import time

import jax

from paella_jax import checkpoint, families
from paella_jax.data.prepare import Preparer, V3Preparer
from paella_jax.data.read import open_data, pick_captions, stage1_images
from paella_jax.encoders.clip import ClipEncoder, load_clip, save_random_clip
from paella_jax.encoders.vq import VQGANCodec, load_vqgan
from paella_jax.images import make_grid, save_png
from paella_jax.training.loop import train as train_paella
from paella_jax.training.vqgan_loop import train_vqgan


class _Stopwatch:
  """Minutes spent per named stage, in the order they ran."""

  def __init__(self):
    self.minutes, self._last = {}, time.perf_counter()

  def lap(self, stage: str) -> None:
    now = time.perf_counter()
    self.minutes[stage] = round((now - self._last) / 60, 2)
    self._last = now


def run(config, workdir: str, progress: bool = True) -> dict:
  """Runs (or skips) every stage; returns the report, also written to WORKDIR/report.json."""
  t0, clock = time.perf_counter(), _Stopwatch()
  path = lambda *parts: os.path.join(workdir, *parts)
  os.makedirs(workdir, exist_ok=True)
  if not os.path.isdir(path("vqgan", "model")):
    images = stage1_images(config.data, config.vqgan.image_size)
    train_vqgan(config.vqgan, images, path("vqgan"), progress)
  codec = VQGANCodec(*load_vqgan(path("vqgan", "model")), batch_size=256)
  clock.lap("vqgan")

  if not os.path.isdir(path("clip")):
    save_random_clip(path("clip"), config.clip)
  encoder = ClipEncoder(*load_clip(path("clip")), batch_size=256)
  uses_byt5 = "byt5" in families.of_config(config.paella).text_encoders
  byt5 = _random_byt5(config.paella.byt5, path("byt5")) if uses_byt5 else None
  if not os.path.isfile(path("data", "manifest.json")):
    options = dict(size=config.vqgan.image_size, crop=config.data.crop, seed=config.data.seed,
                   batch_size=256)
    preparer = (V3Preparer(codec, encoder, byt5_max_length=max(config.paella.data.byt5_buckets),
                           **options) if uses_byt5 else Preparer(codec, encoder, **options))
    preparer.run(open_data(config.data), path("data"), progress=progress)
  clock.lap("prepare")

  paella = config.paella
  paella.data.update(source="records", path=path("data"))
  # The exported model names these encoders, so paella-sample needs no flags.
  paella.export.update(clip_checkpoint="../../clip", vqgan_checkpoint="../../vqgan/model")
  if uses_byt5:
    paella.export.byt5_checkpoint = "../../byt5"
  if not os.path.isdir(path("paella", "model")):
    train_paella(paella, path("paella"), progress=progress)
  clock.lap("paella")

  pipe = _pipeline(paella, path("paella", "model"), encoder, codec, byt5)
  if config.data.source == "scenes":
    from paella_jax import demo
    report = demo.evaluate(config, pipe, codec, workdir)
  else:
    report = sample_captions(config, pipe, workdir)
  clock.lap("evaluate")
  report.update(minutes=(time.perf_counter() - t0) / 60, stage_minutes=clock.minutes,
                last_metrics={stage: _last_metrics(path(stage)) for stage in ("vqgan", "paella")})
  with open(path("report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def _random_byt5(config, out_dir: str):
  """The ByT5 encoder of `config` (configs/t5_tiny.py) with its RANDOM seeded weights, the
  ones the v3 train step builds from the same config, saved to `out_dir` for paella-sample."""
  from paella_jax.encoders.byt5 import ByT5Encoder, random_t5_encoder, save_t5_encoder
  model, params, tokenizer = random_t5_encoder(config.model, seed=config.seed)
  if not os.path.isdir(out_dir):
    save_t5_encoder(out_dir, model, params, tokenizer, meta={"random_weights": True})
  return ByT5Encoder(model, params, tokenizer, pad_multiple=config.pad_multiple,
                     masked=config.masked)


def _pipeline(config, model_dir: str, encoder, codec, byt5_encoder):
  """The exported model of stage 2 with the run's encoders and the config's sampler settings."""
  from paella_jax.pipeline import Pipeline
  family = families.of_config(config)
  _, _, params = checkpoint.load_model(model_dir, expected_kind=family.kind)
  return Pipeline(family.build_model(config.model), jax.device_put(params), kind=family.kind,
                  sampling=config.sampling.to_dict(), latent_shape=config.latent_shape,
                  text_encoder=encoder, codec=codec, byt5_encoder=byt5_encoder)


def sample_captions(config, pipe, workdir: str) -> dict:
  """`eval.samples_per_caption` samples of each of `eval.captions` captions spread over the
  data: WORKDIR/samples/grid.png, one row per caption."""
  captions = pick_captions(open_data(config.data), config.eval.captions)
  n = config.eval.samples_per_caption
  result = pipe.generate(captions, num_images=n, seed=config.seed + 1)
  save_png(os.path.join(workdir, "samples", "grid.png"), make_grid(result.images, columns=n))
  return {"captions": captions, "samples_per_caption": n}


def _last_metrics(stage_dir: str) -> dict:
  """The last line of a stage's metrics.jsonl ({} when it has none)."""
  try:
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return {}
  return json.loads(lines[-1]) if lines else {}


def summary(config, report: dict, workdir: str) -> str:
  """What the command prints at the end of a run."""
  lines = [f"\nfinished in {report['minutes']:.1f} min; samples: {workdir}/samples/grid.png; "
           f"report: {workdir}/report.json"]
  if config.data.source == "scenes":
    from paella_jax import demo
    lines.append(demo.adherence_table(report))
    caption = "a blue square in the bottom right"
  else:
    lines.append("sampled captions: " + "; ".join(report["captions"]))
    caption = report["captions"][0]
  lines.append(f'try: paella-sample --checkpoint {workdir}/paella/model --prompt "{caption}"')
  return "\n".join(lines)
