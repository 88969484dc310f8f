"""Zero-shot FID, CLIP score and (for the demo's model) prompt adherence of a checkpoint.

    python -m paella_jax.eval --checkpoint ckpts/paella_v1 --data coco/ --num-samples 30000 \
        --inception ckpts/inception_fid --clip-score-model ckpts/clip_vit_l14 \
        --cfg 1 2 3 4 5 6 7 8 --batch-size 256 --out eval/paella_v1
    python -m paella_jax.eval                  # the demo's model (runs/demo): adherence

For each guidance weight: captions -> CLIP text embeddings -> the sampler (batches sharded over
the local devices) -> VQGAN decode -> images rounded to 8 bits (as if saved as PNGs) -> Inception
pool features (FID against the references' statistics, computed once and cached), CLIP score,
and for the demo the adherence analyser. The same seed gives every weight the same noise.
Writes OUT/report.json and OUT/samples_cfg{w}.png (the first 64 images).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

from paella_jax.data.scenes import IMAGE_SIZE
from paella_jax.eval.adherence import score_seen_and_held_out
from paella_jax.images import to_uint8

DEMO_SAMPLES = 1152           # 16 per prompt, as the demo's own evaluation of seen prompts
DEFAULT_SAMPLES = 30000       # the paper's zero-shot COCO FID


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m paella_jax.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", default="runs/demo/paella/model", help="Paella model directory")
  p.add_argument("--clip", help="text encoder (default: the model.json's clip_checkpoint)")
  p.add_argument("--vqgan", help="VQGAN (default: the model.json's vqgan_checkpoint)")
  p.add_argument("--data", help="a COCO folder or captions json, tfds:coco_captions[:SPLIT], or "
                 "demo (default for the demo's model)")
  p.add_argument("--images", help="COCO image folder (default: beside annotations/)")
  p.add_argument("--num-samples", type=int, help=f"images per guidance weight "
                 f"(default {DEFAULT_SAMPLES}; {DEMO_SAMPLES} for the demo)")
  p.add_argument("--batch-size", type=int, default=256, help="images per sharded batch")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cfg", type=float, nargs="+", help="guidance weight(s): several give a sweep "
                 "(default: the checkpoint's, else 5)")
  p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's, else 8)")
  p.add_argument("--typical-mass", type=float, help="default: the checkpoint's, else 0.2")
  p.add_argument("--inception", help="FID Inception checkpoint (python -m paella_jax.convert "
                 "inception); without it no FID")
  p.add_argument("--reference-stats", help=".npz of reference mu/sigma (pytorch-fid layout) "
                 "instead of computing them")
  p.add_argument("--stats-cache", default=os.path.expanduser("~/.cache/paella_jax/fid"),
                 help="folder caching reference statistics")
  p.add_argument("--clip-score-model", help="full CLIP checkpoint (e.g. ViT-L/14) for the CLIP "
                 "score; without it no CLIP score")
  p.add_argument("--out", default="eval_out", help="output folder")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def is_demo(clip_dir: str | None, image_size: int) -> bool:
  """The demo's model: its text encoder is the demo's random CLIP and it draws 32x32 images."""
  from paella_jax.checkpoint import read_model_description
  if not clip_dir:
    return False
  clip_meta = read_model_description(clip_dir).get("meta", {})
  return bool(clip_meta.get("random_weights")) and image_size == IMAGE_SIZE


class Generator:
  """captions, cfg, batch index -> images (N, H, W, 3) float32 in [0, 1] on the 8-bit grid.

  Batches of `batch_size` (rounded up to a multiple of the local devices; the last one padded)
  go through the pipeline's sampler sharded over the local devices, so each compiles once.
  """

  def __init__(self, args):
    import jax
    from paella_jax.pipeline import Pipeline
    self.devices = jax.local_device_count()
    self.batch_size = -(-args.batch_size // self.devices) * self.devices
    self.pipe = Pipeline.from_checkpoint(args.checkpoint, clip=args.clip, vqgan=args.vqgan,
                                         batch_size=self.batch_size)
    self.settings = self.pipe.settings("generate", steps=args.steps,
                                       typical_mass=args.typical_mass)
    self.key = jax.random.key(args.seed)

  @property
  def image_size(self) -> int:
    return self.pipe.latent_shape[0] * self.pipe.codec.module.factor

  def __call__(self, captions: list[str], cfg: float, index: int) -> np.ndarray:
    import jax
    emb = self.pipe.encode_text(captions)
    emb = np.concatenate([emb, np.repeat(emb[-1:], self.batch_size - len(emb), 0)])
    codes = self.pipe.sample(emb, jax.random.fold_in(self.key, index),
                             self.settings.with_overrides(cfg=cfg))
    images = self.pipe.decode(codes)[:len(captions)]
    return to_uint8(images).astype(np.float32) / 255


def inception_id(module, params) -> str:
  """Names an Inception (its input size and a digest of two kernels) in cache file names."""
  digest = hashlib.sha1(np.asarray(params["Conv2d_1a_3x3"]["kernel"]).tobytes()
                        + np.asarray(params["Mixed_7c"]["branch_pool"]["kernel"]).tobytes())
  return f"inception{module.resize_to}-{digest.hexdigest()[:10]}"


def reference_stats(args, data, features, image_size: int, inception: str) -> tuple:
  """(mu, sigma, path) of the reference images: --reference-stats, the cache, or computed."""
  from tqdm.auto import tqdm
  from paella_jax.eval.fid import GaussianStats, load_stats, save_stats
  if args.reference_stats:
    return (*load_stats(args.reference_stats), args.reference_stats)
  path = os.path.join(args.stats_cache, f"{data.name}-{image_size}px-{inception}.npz")
  if os.path.isfile(path):
    return (*load_stats(path), path)
  stats = GaussianStats()
  batches = data.references(image_size, args.batch_size)
  total = -(-len(data.captions) // args.batch_size)
  for batch in tqdm(batches, total=total, desc="reference statistics", disable=args.no_progress):
    stats.update(features(batch.astype(np.float32) / 255))
  mu, sigma = stats.mean_cov()
  save_stats(path, mu, sigma, images=stats.n)
  return mu, sigma, path


def evaluate(args) -> dict:
  """Runs the evaluation described by `args` (see parse_args); returns the report."""
  import jax
  from tqdm.auto import tqdm
  from paella_jax.eval.data import open_eval_data
  from paella_jax.eval.fid import GaussianStats, frechet_distance
  from paella_jax.images import make_grid, save_png

  gen = Generator(args)
  demo = is_demo(gen.pipe.clip_dir, gen.image_size)
  spec = args.data or ("demo" if demo else None)
  if spec is None:
    raise ValueError("pass --data: a COCO folder or captions json, or tfds:coco_captions")
  num = args.num_samples or (DEMO_SAMPLES if spec == "demo" else DEFAULT_SAMPLES)
  data = open_eval_data(spec, num, args.seed, args.images)

  features = reference = scorer = None
  if args.inception:
    from paella_jax.encoders.inception import load_inception
    from paella_jax.eval.fid import inception_features
    inception, inception_params = load_inception(args.inception)
    features = inception_features(inception, inception_params, gen.batch_size)
    reference = reference_stats(args, data, features, gen.image_size,
                                inception_id(inception, inception_params))
  if args.clip_score_model:
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    from paella_jax.eval.clip_score import ClipScorer
    scorer = ClipScorer(ClipEncoder(*load_clip(args.clip_score_model),
                                    batch_size=gen.batch_size))

  os.makedirs(args.out, exist_ok=True)
  cfgs = args.cfg or [gen.settings.cfg]
  report = {"checkpoint": os.path.abspath(args.checkpoint), "data": data.name,
            "num_samples": num, "seed": args.seed, "batch_size": gen.batch_size,
            "devices": f"{gen.devices} x {jax.local_devices()[0].device_kind}",
            "sampling": dict(gen.settings.to_dict(), latent_shape=list(gen.pipe.latent_shape)),
            "image_size": gen.image_size,
            "inception": args.inception, "reference_stats": reference and reference[2],
            "clip_score_model": args.clip_score_model, "results": []}
  for cfg in cfgs:
    stats, clip_scores, kept, times = GaussianStats(), [], [], [time.perf_counter()]
    for index, start in enumerate(tqdm(range(0, num, gen.batch_size), desc=f"cfg {cfg:g}",
                                       disable=args.no_progress)):
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
    result = {"cfg": cfg, "seconds": round(times[-1] - times[0], 2),
              "first_batch_seconds": round(times[1] - times[0], 2)}   # compiles, first weight
    if len(times) > 2:    # steady state: every batch after the first (all full but the last)
      result["images_per_second"] = round((num - gen.batch_size) / (times[-1] - times[1]), 2)
    if features is not None:
      result["fid"] = frechet_distance(*stats.mean_cov(), reference[0], reference[1])
    if scorer is not None:
      result["clip_score"] = float(np.concatenate(clip_scores).mean())
    if data.scenes is not None:
      result["adherence"] = score_seen_and_held_out(kept, data.scenes)
    save_png(os.path.join(args.out, f"samples_cfg{cfg:g}.png"), make_grid(kept[:64]))
    report["results"].append(result)
    print(json.dumps(result))
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv=None):
  args = parse_args(argv)
  report = evaluate(args)
  print(f"wrote {len(report['results'])} result(s) to {os.path.join(args.out, 'report.json')}")
