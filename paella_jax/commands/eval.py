"""paella-eval: zero-shot FID, CLIP score and (for the demo's model) prompt adherence.

    paella-eval --checkpoint ckpts/paella_v1 --data coco/ --num-samples 30000 \
        --inception ckpts/inception_fid --clip-score-model ckpts/clip_vit_l14 \
        --cfg 1 2 3 4 5 6 7 8 --batch-size 256 --out eval/paella_v1
    paella-eval                  # the demo's model (runs/demo): adherence on its scenes
    paella-eval --data demo:rectangle --lora runs/demo_lora/adapter.safetensors   # a new shape

Paella v1 and v3 checkpoints alike (see paella_jax/eval/run.py for what is measured). Writes
OUT/report.json and OUT/samples_cfg{w}.png (the first 64 images of each guidance weight).
"""

from __future__ import annotations

import argparse
import json
import os

from paella_jax.commands.options import add_model_options, number_or_off

DEMO_SAMPLES_PER_PROMPT = 16  # as the demo's own evaluation of seen prompts
DEFAULT_SAMPLES = 30000       # the paper's zero-shot COCO FID


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="paella-eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_options(p, "runs/demo/paella/model")
  p.add_argument("--data", help="a COCO folder or captions json, tfds:coco_captions[:SPLIT], or "
                 "demo (default for the demo's model; demo:SHAPE,... the prompts of those "
                 "shapes)")
  p.add_argument("--images", help="COCO image folder (default: beside annotations/)")
  p.add_argument("--num-samples", type=int, help=f"images per guidance weight "
                 f"(default {DEFAULT_SAMPLES}; {DEMO_SAMPLES_PER_PROMPT} per prompt for the demo)")
  p.add_argument("--batch-size", type=int, default=256, help="images per sharded batch")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cfg", type=number_or_off, nargs="+", help="guidance weight(s), or 'off': "
                 "several give a sweep (default: the checkpoint's)")
  p.add_argument("--steps", type=int, help="denoising steps (default: the checkpoint's)")
  p.add_argument("--typical-mass", type=number_or_off,
                 help="typical filtering mass in (0, 1], or 'off' (default: the checkpoint's)")
  p.add_argument("--inception", help="FID Inception checkpoint (paella-convert inception); "
                 "without it no FID")
  p.add_argument("--reference-stats", help=".npz of reference mu/sigma (pytorch-fid layout) "
                 "instead of computing them")
  p.add_argument("--stats-cache", default=os.path.expanduser("~/.cache/paella_jax/fid"),
                 help="folder caching reference statistics")
  p.add_argument("--clip-score-model", help="full CLIP checkpoint (e.g. ViT-L/14) for the CLIP "
                 "score; without it no CLIP score")
  p.add_argument("--out", default="eval_out", help="output folder")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if args.batch_size < 1 or (args.num_samples is not None and args.num_samples < 1):
    p.error("--batch-size and --num-samples must be >= 1")
  return args


def is_demo(clip_dir: str | None, image_size: int) -> bool:
  """The demo's model: its text encoder is the demo's random CLIP and it draws its image size."""
  from paella_jax.checkpoint import read_model_description
  from paella_jax.data.scenes import IMAGE_SIZE
  if not clip_dir:
    return False
  clip_meta = read_model_description(clip_dir).get("meta", {})
  return bool(clip_meta.get("random_weights")) and image_size == IMAGE_SIZE


def main(argv=None) -> dict:
  """Runs the evaluation the arguments describe; returns the report (also OUT/report.json)."""
  import jax
  from paella_jax.data.scenes import shape_scenes
  from paella_jax.eval.data import demo_shapes, open_eval_data
  from paella_jax.eval.run import Generator, cfg_name, evaluate, inception_id, reference_stats
  from paella_jax.images import make_grid, save_png
  from paella_jax.pipeline import Pipeline
  args = parse_args(argv)
  devices = jax.local_device_count()
  batch_size = -(-args.batch_size // devices) * devices   # a multiple of the local devices
  pipe = Pipeline.from_checkpoint(args.checkpoint, clip=args.clip, vqgan=args.vqgan,
                                  byt5=args.byt5, batch_size=batch_size, lora=args.lora,
                                  quantize=args.quantize)
  gen = Generator(pipe, batch_size, args.seed,
                  settings=dict(steps=args.steps, typical_mass=args.typical_mass))
  spec = args.data or ("demo" if is_demo(pipe.clip_dir, gen.image_size) else None)
  if spec is None:
    raise ValueError("pass --data: a COCO folder or captions json, or tfds:coco_captions")
  shapes = demo_shapes(spec)
  num = args.num_samples or (DEMO_SAMPLES_PER_PROMPT * len(shape_scenes(shapes)) if shapes
                             else DEFAULT_SAMPLES)
  data = open_eval_data(spec, num, args.seed, args.images)

  features = reference = scorer = None
  if args.inception:
    from paella_jax.encoders.inception import load_inception
    from paella_jax.eval.fid import inception_features, load_stats
    inception, inception_params = load_inception(args.inception)
    features = inception_features(inception, inception_params, batch_size)
    reference = ((*load_stats(args.reference_stats), args.reference_stats) if args.reference_stats
                 else reference_stats(data, features, gen.image_size, batch_size,
                                      args.stats_cache, inception_id(inception, inception_params),
                                      progress=not args.no_progress))
  if args.clip_score_model:
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    from paella_jax.eval.clip_score import ClipScorer
    scorer = ClipScorer(ClipEncoder(*load_clip(args.clip_score_model), batch_size=batch_size))

  os.makedirs(args.out, exist_ok=True)
  cfgs = args.cfg or [gen.settings.cfg]
  results = evaluate(gen, data, cfgs, features=features, reference=reference, scorer=scorer,
                     progress=not args.no_progress, report=lambda r: print(json.dumps(r)))
  for cfg, (_, kept) in zip(cfgs, results):
    save_png(os.path.join(args.out, f"samples_cfg{cfg_name(cfg)}.png"), make_grid(kept[:64]))
  report = {"checkpoint": os.path.abspath(args.checkpoint), "kind": pipe.kind,
            "data": data.name, "num_samples": num, "seed": args.seed, "batch_size": batch_size,
            "devices": f"{devices} x {jax.local_devices()[0].device_kind}",
            "sampling": dict(gen.settings.to_dict(), latent_shape=list(pipe.latent_shape)),
            "image_size": gen.image_size, "inception": args.inception,
            "reference_stats": reference and reference[2],
            "clip_score_model": args.clip_score_model,
            "results": [result for result, _ in results]}
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {len(results)} result(s) to {os.path.join(args.out, 'report.json')}")
  return report
