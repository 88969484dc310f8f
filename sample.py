"""Sample token maps (and, with a VQGAN, images) from a paella-jax checkpoint.

    python sample.py --checkpoint runs/default/model --batch-size 4 --seed 0 --out outputs/
    python sample.py --checkpoint ckpt/paella_v1 --embeddings text_emb.npy --steps 8 --cfg 5

Conditioning comes from --embeddings (an .npy of (B, c_clip) or (B, h', w', c_clip)), or is
the null (zero) conditioning when none is given. Writes OUT/codes.npy ((B, h, w) int32) and
OUT/codes.json with every setting needed to regenerate the codes exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", default="runs/default/model",
                 help="model directory written by train.py or `python -m paella_jax.convert`")
  p.add_argument("--prompt", action="append", default=[],
                 help="text prompt (repeatable); needs a CLIP text encoder")
  p.add_argument("--embeddings", help=".npy of conditioning embeddings, one per image")
  p.add_argument("--batch-size", type=int, default=4, help="images per prompt / embedding")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=None, help="denoising steps (config: 8)")
  p.add_argument("--cfg", type=float, default=None, help="guidance weight; <0 disables")
  p.add_argument("--typical-mass", type=float, default=None, help="typical mass; <=0 disables")
  p.add_argument("--temperature", type=float, nargs=2, default=None, metavar=("START", "END"))
  p.add_argument("--renoise-mode", choices=("start", "prev", "rand"), default=None)
  p.add_argument("--latent-shape", type=int, nargs=2, default=None, metavar=("H", "W"))
  p.add_argument("--out", default="outputs", help="output folder")
  return p.parse_args(argv)


def settings_from(args, meta: dict) -> dict:
  """Sampler settings: the command line over the checkpoint's recorded defaults over v1's."""
  defaults = dict(steps=8, cfg=5.0, typical_mass=0.2, typical_min_tokens=1,
                  temperature=[1.0, 1.0], renoise_mode="start")
  defaults.update(meta.get("sampling", {}))
  given = dict(steps=args.steps, cfg=args.cfg, typical_mass=args.typical_mass,
               temperature=args.temperature, renoise_mode=args.renoise_mode)
  settings = {**defaults, **{k: v for k, v in given.items() if v is not None}}
  settings["temperature"] = list(settings["temperature"])
  if settings["cfg"] is not None and settings["cfg"] < 0:
    settings["cfg"] = None
  if settings["typical_mass"] is not None and settings["typical_mass"] <= 0:
    settings["typical_mass"] = None
  settings["latent_shape"] = list(args.latent_shape or meta.get("latent_shape", [32, 32]))
  return settings


def conditioning(args, c_clip: int) -> np.ndarray:
  if args.prompt:
    raise SystemExit("text prompts need a CLIP text encoder checkpoint; pass --embeddings "
                     "with precomputed embeddings for now")
  if args.embeddings:
    emb = np.load(args.embeddings, allow_pickle=False).astype(np.float32)
    if emb.ndim not in (2, 4) or emb.shape[-1] != c_clip:
      raise SystemExit(f"--embeddings must be (B, {c_clip}) or (B, h', w', {c_clip}), "
                       f"got {emb.shape}")
  else:
    emb = np.zeros((1, c_clip), np.float32)
  return np.repeat(emb, args.batch_size, axis=0)


def main(argv=None):
  args = parse_args(argv)
  import jax
  from paella_jax.checkpoint import load_model
  from paella_jax.models.paella import build_model
  from paella_jax.sampling import sample

  kind, config, params = load_model(args.checkpoint, expected_kind="paella_v1")
  meta = json.load(open(os.path.join(args.checkpoint, "model.json"))).get("meta", {})
  model = build_model(config)
  settings = settings_from(args, meta)
  clip = conditioning(args, model.c_clip)
  codes = sample(model, jax.device_put(params), clip, jax.random.key(args.seed),
                 steps=settings["steps"], cfg=settings["cfg"],
                 typical_mass=settings["typical_mass"],
                 typical_min_tokens=settings["typical_min_tokens"],
                 temperature=tuple(settings["temperature"]),
                 latent_shape=tuple(settings["latent_shape"]),
                 renoise_mode=settings["renoise_mode"])
  os.makedirs(args.out, exist_ok=True)
  np.save(os.path.join(args.out, "codes.npy"), np.asarray(codes))
  record = dict(checkpoint=os.path.abspath(args.checkpoint), seed=args.seed,
                batch_size=args.batch_size, embeddings=args.embeddings, **settings)
  with open(os.path.join(args.out, "codes.json"), "w") as f:
    json.dump(record, f, indent=2)
  print(f"wrote {codes.shape} codes to {os.path.join(args.out, 'codes.npy')}")


if __name__ == "__main__":
  main()
