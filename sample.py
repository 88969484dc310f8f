"""Sample token maps (and, with a VQGAN, images) from a paella-jax checkpoint.

    python sample.py --checkpoint runs/default/model --batch-size 4 --seed 0 --out outputs/
    python sample.py --checkpoint ckpt/paella_v1 --embeddings text_emb.npy --steps 8 --cfg 5

    python sample.py --checkpoint ckpt/paella_v1 --clip ckpt/clip_vit_g14 --vqgan ckpt/vqgan \
        --prompt "a red fox in the snow" --batch-size 4

Conditioning comes from --prompt (encoded by the --clip text encoder), from --embeddings (an .npy
of (B, c_clip) or (B, h', w', c_clip)), or is the null (zero) conditioning. Writes
OUT/codes.npy ((N, h, w) int32) and OUT/codes.json with every setting needed to regenerate the
codes exactly; with a VQGAN (--vqgan, or the one recorded in the checkpoint) also one PNG per
image (OUT/NNNN.png, each with a JSON sidecar) and OUT/grid.png. --clip and --vqgan default to
the encoders recorded in the checkpoint's model.json ("clip_checkpoint", "vqgan_checkpoint").
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
  p.add_argument("--checkpoint", default="runs/demo/paella/model",
                 help="model directory written by train.py or `python -m paella_jax.convert`")
  p.add_argument("--prompt", action="append", default=[],
                 help="text prompt (repeatable); needs a CLIP text encoder")
  p.add_argument("--embeddings", help=".npy of conditioning embeddings, one per image")
  p.add_argument("--clip", help="CLIP checkpoint directory (python -m paella_jax.convert clip)")
  p.add_argument("--vqgan", help="VQGAN checkpoint directory (python -m paella_jax.convert vqgan)")
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


def encoder_path(given: str | None, meta: dict, key: str, checkpoint: str) -> str | None:
  """An encoder checkpoint: the command line's, else the one recorded in the model's meta
  (relative paths there are relative to the model checkpoint)."""
  if given:
    return given
  recorded = meta.get(key)
  return os.path.join(checkpoint, recorded) if recorded else None


def conditioning(args, c_clip: int, clip_dir: str | None) -> tuple[np.ndarray, list[str]]:
  """(N, c_clip) or (N, h', w', c_clip) embeddings, batch_size per prompt/embedding, and the
  prompt of each row ("" where none)."""
  if args.prompt:
    if not clip_dir:
      raise SystemExit("text prompts need a CLIP text encoder: pass --clip CKPT_DIR")
    from paella_jax.convert.clip import ClipEncoder, load_clip
    encoder = ClipEncoder(*load_clip(clip_dir, text_only=True))
    emb = encoder.encode_text(args.prompt)
    prompts = args.prompt
  elif args.embeddings:
    emb = np.load(args.embeddings, allow_pickle=False).astype(np.float32)
    prompts = [""] * len(emb)
  else:
    emb, prompts = np.zeros((1, c_clip), np.float32), [""]
  if emb.ndim not in (2, 4) or emb.shape[-1] != c_clip:
    raise SystemExit(f"conditioning must be (B, {c_clip}) or (B, h', w', {c_clip}), "
                     f"got {emb.shape}")
  return (np.repeat(emb, args.batch_size, axis=0),
          [p for p in prompts for _ in range(args.batch_size)])


def write_images(out: str, codes: np.ndarray, vqgan_dir: str, prompts: list[str],
                 record: dict) -> None:
  """Decodes the codes and writes NNNN.png + NNNN.json per image and grid.png."""
  from paella_jax.convert.vqgan import VQGANCodec, load_vqgan
  from paella_jax.images import make_grid, save_png
  images = VQGANCodec(*load_vqgan(vqgan_dir)).decode(codes)
  for i, image in enumerate(images):
    save_png(os.path.join(out, f"{i:04d}.png"), image)
    with open(os.path.join(out, f"{i:04d}.json"), "w") as f:
      json.dump(dict(record, index=i, prompt=prompts[i], vqgan=os.path.abspath(vqgan_dir)),
                f, indent=2)
  save_png(os.path.join(out, "grid.png"), make_grid(images, columns=record["batch_size"]))


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
  clip_dir = encoder_path(args.clip, meta, "clip_checkpoint", args.checkpoint)
  vqgan_dir = encoder_path(args.vqgan, meta, "vqgan_checkpoint", args.checkpoint)
  clip, prompts = conditioning(args, model.c_clip, clip_dir)
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
                batch_size=args.batch_size, prompts=args.prompt, embeddings=args.embeddings,
                clip=clip_dir and os.path.abspath(clip_dir), **settings)
  with open(os.path.join(args.out, "codes.json"), "w") as f:
    json.dump(record, f, indent=2)
  print(f"wrote {codes.shape} codes to {os.path.join(args.out, 'codes.npy')}")
  if vqgan_dir:
    write_images(args.out, np.asarray(codes), vqgan_dir, prompts, record)
    print(f"wrote {len(codes)} images and grid.png to {args.out}")


if __name__ == "__main__":
  main()
