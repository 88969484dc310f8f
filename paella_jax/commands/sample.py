"""Sample images from a paella-jax checkpoint: generation and the paper's editing modes.

    python sample.py --prompt "a blue square in the bottom right"          # generate (default)
    python sample.py generate --prompt "a fox" --batch-size 4 --seed 1 --cfg 5 --steps 8
    python sample.py inpaint --image in.png --box 8 8 24 24 --prompt "a red circle"
    python sample.py inpaint --image in.png --mask mask.png --prompt "..."
    python sample.py outpaint --image in.png --canvas 32 64 --offset 0 16 --prompt "..."
    python sample.py edit --image in.png --prompt "..." --start-step 8 --steps 24
    python sample.py vary --image in.png --batch-size 4
    python sample.py interpolate --prompt "a red circle" --prompt "a blue circle" --frames 8
    python sample.py multi --prompt "a red circle" --prompt "a blue square" --layout columns
    python sample.py replay outputs/0001.json --out again/               # regenerate exactly

Every command writes OUT/NNNN.png per image with a JSON sidecar (all arguments, the seed, every
sampler setting and the sampler version, the checkpoint ids: enough to regenerate the image bit
for bit with `replay`), OUT/grid.png, OUT/codes.npy and OUT/codes.json; `interpolate` also
writes OUT/interpolation.gif.
The model's checkpoint records its CLIP and VQGAN (--clip/--vqgan override them). Sampler
defaults come from the checkpoint's sampling settings, per mode (the paper's: cfg 5 to generate,
4 to interpolate and outpaint, 6 to inpaint and edit; editing runs 24 steps from step 8 with
renoise 'prev'), else from configs/paella_v1.py; any of them can be overridden.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)

COMMANDS = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate", "multi")
PATH_ARGS = ("checkpoint", "clip", "vqgan", "embeddings", "image", "mask", "label_map")
SAMPLER_KEYS = ("steps", "cfg", "typical_mass", "typical_min_tokens", "temperature",
                "renoise_mode", "start_step")


# ------------------------------------------------------------------------------ arguments

def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", default="runs/demo/paella/model",
                 help="model directory written by train.py or `python -m paella_jax.convert`")
  p.add_argument("--clip", help="CLIP checkpoint directory (default: the model's)")
  p.add_argument("--vqgan", help="VQGAN checkpoint directory (default: the model's)")
  p.add_argument("--batch-size", type=int, default=4, help="images per prompt / input")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, help="denoising steps T")
  p.add_argument("--start-step", type=int, help="first step to run (editing strength)")
  p.add_argument("--cfg", type=float, help="guidance weight; negative disables guidance")
  p.add_argument("--typical-mass", type=float, help="typical filtering mass; 0 disables it")
  p.add_argument("--temperature", type=float, nargs=2, metavar=("START", "END"))
  p.add_argument("--renoise-mode", choices=("start", "prev", "rand"))
  p.add_argument("--out", default="outputs", help="output folder")


def parse_args(argv=None) -> argparse.Namespace:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS + ("replay", "-h", "--help"):
    argv = ["generate"] + argv  # `python sample.py --prompt ...` generates
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  helps = {"generate": "prompts (or embeddings) -> images",
           "inpaint": "repaint a masked region of an image",
           "outpaint": "extend an image onto a larger canvas",
           "edit": "structural editing: noise an image partway, denoise towards a prompt",
           "vary": "variations of an image through its CLIP image embedding",
           "interpolate": "frames between prompts (lerp or slerp of their embeddings)",
           "multi": "several prompts over regions (columns, rows or a label map)"}
  parsers = {name: sub.add_parser(name, help=text) for name, text in helps.items()}
  for p in parsers.values():
    _common(p)
  for name in ("generate", "inpaint", "outpaint", "edit", "interpolate", "multi"):
    parsers[name].add_argument("--prompt", action="append", default=[], help="repeatable")
  parsers["generate"].add_argument("--embeddings", help=".npy of (N, C) or (N, h', w', C) "
                                   "conditioning instead of prompts")
  parsers["generate"].add_argument("--latent-shape", type=int, nargs=2, metavar=("H", "W"))
  for name in ("inpaint", "outpaint", "edit", "vary"):
    parsers[name].add_argument("--image", required=True, help="input image file")
  mask = parsers["inpaint"].add_mutually_exclusive_group(required=True)
  mask.add_argument("--mask", help="mask image of the same size: white = repaint")
  mask.add_argument("--box", type=int, nargs=4, metavar=("TOP", "LEFT", "BOTTOM", "RIGHT"),
                    help="pixel box to repaint")
  parsers["outpaint"].add_argument("--canvas", type=int, nargs=2, required=True,
                                   metavar=("H", "W"), help="canvas size in pixels")
  parsers["outpaint"].add_argument("--offset", type=int, nargs=2, default=None,
                                   metavar=("TOP", "LEFT"),
                                   help="where the image goes, in pixels (default: centred)")
  parsers["interpolate"].add_argument("--frames", type=int, default=8)
  parsers["interpolate"].add_argument("--mode", choices=("lerp", "slerp"), default="lerp")
  parsers["multi"].add_argument("--layout", choices=("columns", "rows"), default="columns")
  parsers["multi"].add_argument("--label-map", help=".npy or image of region labels "
                                "0..P-1 (any size; resized to the latent)")
  parsers["multi"].add_argument("--blend", type=float, default=1.0,
                                help="border softness in tokens (0 = hard)")
  parsers["multi"].add_argument("--latent-shape", type=int, nargs=2, metavar=("H", "W"))
  replay = sub.add_parser("replay", help="regenerate the images of a JSON sidecar exactly")
  replay.add_argument("sidecar")
  replay.add_argument("--out", default="replay")
  args = parser.parse_args(argv)
  for name in PATH_ARGS:  # sidecars record absolute paths, so replays work from anywhere
    if getattr(args, name, None):
      setattr(args, name, os.path.abspath(getattr(args, name)))
  return args


# ------------------------------------------------------------------------------ models

def checkpoint_id(description: dict) -> str:
  """A short hash of a model description (model.json), recorded in sidecars."""
  return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


class Models:
  """The token predictor, its sampling defaults, and (on first use) its CLIP and VQGAN."""

  def __init__(self, args):
    from paella_jax.checkpoint import load_model, read_model_description, recorded_path
    from paella_jax.models.paella import build_model
    import jax
    _, config, params = load_model(args.checkpoint, expected_kind="paella_v1")
    self.description = read_model_description(args.checkpoint)
    self.meta = self.description.get("meta", {})
    self.model = build_model(config)
    self.params = jax.device_put(params)
    self.clip_dir = args.clip or recorded_path(args.checkpoint, self.meta, "clip_checkpoint")
    self.vqgan_dir = args.vqgan or recorded_path(args.checkpoint, self.meta, "vqgan_checkpoint")
    self._clip = self._codec = None

  def clip(self, vision: bool = False):
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    if not self.clip_dir:
      raise SystemExit("this needs a CLIP encoder: pass --clip CKPT_DIR")
    if self._clip is None or (vision and self._clip.model.config.vision is None):
      self._clip = ClipEncoder(*load_clip(self.clip_dir, text_only=not vision))
    return self._clip

  def codec(self):
    from paella_jax.encoders.vq import VQGANCodec, load_vqgan
    if not self.vqgan_dir:
      raise SystemExit("this needs a VQGAN: pass --vqgan CKPT_DIR")
    if self._codec is None:
      self._codec = VQGANCodec(*load_vqgan(self.vqgan_dir))
    return self._codec

  def sampler_settings(self, args) -> dict:
    """The command line's settings over the mode's defaults over the general ones."""
    sampling = self.meta.get("sampling")
    if sampling is None:
      from configs import paella_v1
      sampling = paella_v1.get_config().sampling.to_dict()
    settings = {k: sampling[k] for k in SAMPLER_KEYS if k in sampling}
    settings.setdefault("start_step", 0)
    settings.update(sampling.get("modes", {}).get(args.command, {}))
    for key in SAMPLER_KEYS:
      if getattr(args, key, None) is not None:
        settings[key] = getattr(args, key)
    settings["temperature"] = list(settings["temperature"])
    return settings


# ------------------------------------------------------------------------------ inputs

def read_image(path: str, factor: int) -> np.ndarray:
  from paella_jax.images import load_image
  image = load_image(path)
  h, w = image.shape[:2]
  if h % factor or w % factor:
    raise SystemExit(f"{path}: size {h}x{w} is not a multiple of the VQGAN factor {factor}; "
                     f"crop or resize it, e.g. to {h - h % factor}x{w - w % factor}")
  return image


def text_conditioning(models: Models, prompts: list[str]) -> np.ndarray:
  if not prompts:
    raise SystemExit("give at least one --prompt")
  return models.clip().encode_text(prompts)


def plan(args, models: Models, settings: dict) -> dict:
  """Everything the sampler needs for this command: conditioning, init tokens, mask, labels."""
  import jax
  from paella_jax import editing
  n = args.batch_size
  c_clip = models.model.c_clip
  latent = models.meta.get("latent_shape", [32, 32])
  if args.command == "generate":
    if args.embeddings:
      emb = np.load(args.embeddings, allow_pickle=False).astype(np.float32)
      labels = [f"embedding {i}" for i in range(len(emb))]
    elif args.prompt:
      emb, labels = text_conditioning(models, args.prompt), args.prompt
    else:
      emb, labels = np.zeros((1, c_clip), np.float32), ["(unconditional)"]
    return dict(clip=np.repeat(emb, n, 0), labels=[l for l in labels for _ in range(n)],
                latent_shape=tuple(args.latent_shape or latent))
  if args.command == "interpolate":
    if len(args.prompt) < 2:
      raise SystemExit("interpolate needs two or more --prompt")
    path = editing.interpolation_path(text_conditioning(models, args.prompt), args.frames,
                                      args.mode)
    noise = jax.random.randint(jax.random.key(args.seed + 1), (1, *latent), 0,
                               models.model.num_labels)
    # Every frame starts from the same noise, so that frames differ only by their embedding.
    return dict(clip=np.repeat(path, n, 0), init_tokens=np.repeat(np.asarray(noise),
                                                                  args.frames * n, 0),
                labels=[f"frame {i}" for i in range(args.frames) for _ in range(n)])
  if args.command == "multi":
    emb = text_conditioning(models, args.prompt)
    size = tuple(args.latent_shape or latent)
    if args.label_map:
      labels = editing.resize_labels(_read_labels(args.label_map), size)
    else:
      labels = editing.region_labels(size, len(emb), args.layout)
    cmap = editing.conditioning_map(emb, labels, args.blend)
    return dict(clip=np.repeat(cmap[None], n, 0), labels=[" | ".join(args.prompt)] * n,
                latent_shape=size)
  if args.command == "vary":
    from paella_jax.models.clip import preprocess_images
    encoder = models.clip(vision=True)
    image = read_image(args.image, models.codec().module.factor)
    pixels = preprocess_images(image[None], encoder.model.config.vision.image_size)
    emb = encoder.encode_images(np.asarray(pixels))
    if emb.shape[-1] != c_clip:
      raise SystemExit(f"the CLIP image embedding has {emb.shape[-1]} dims, the model takes {c_clip}")
    return dict(clip=np.repeat(emb, n, 0), labels=[os.path.basename(args.image)] * n,
                latent_shape=tuple(latent))
  # inpaint, outpaint, edit: an encoded image and a prompt
  codec = models.codec()
  image = read_image(args.image, codec.module.factor)
  codes = codec.encode(image[None])
  emb = text_conditioning(models, args.prompt)
  clip = np.repeat(emb, n, 0)
  labels = [p for p in args.prompt for _ in range(n)]
  codes = np.repeat(codes, len(clip), 0)
  if args.command == "inpaint":
    h, w = image.shape[:2]
    if args.mask:
      pixel_mask = _read_mask(args.mask)
      if pixel_mask.shape != (h, w):
        raise SystemExit(f"mask {pixel_mask.shape[1]}x{pixel_mask.shape[0]} and image {w}x{h} "
                         "differ in size")
    else:
      pixel_mask = editing.box_mask(h, w, args.box)
    mask = editing.latent_mask(pixel_mask, codec.module.factor)
    return dict(clip=clip, labels=labels, init_tokens=codes,
                mask=np.repeat(mask[None], len(clip), 0))
  if args.command == "outpaint":
    f = codec.module.factor
    canvas = tuple(args.canvas)
    if canvas[0] % f or canvas[1] % f:
      raise SystemExit(f"canvas {canvas[0]}x{canvas[1]} is not a multiple of the VQGAN factor {f}")
    h, w = image.shape[:2]
    if canvas[0] < h or canvas[1] < w:
      raise SystemExit(f"canvas {canvas[0]}x{canvas[1]} is smaller than the image {h}x{w}")
    offset = tuple(args.offset) if args.offset else ((canvas[0] - h) // 2, (canvas[1] - w) // 2)
    if offset[0] % f or offset[1] % f:
      raise SystemExit(f"offset {offset} is not a multiple of the VQGAN factor {f}")
    tokens, mask = editing.outpaint_canvas(codes, (canvas[0] // f, canvas[1] // f),
                                           (offset[0] // f, offset[1] // f))
    return dict(clip=clip, labels=labels, init_tokens=tokens, mask=mask)
  # edit
  noised = editing.noise_for_edit(jax.random.key(args.seed + 1), codes, settings["start_step"],
                                  settings["steps"], models.model.num_labels)
  return dict(clip=clip, labels=labels, init_tokens=np.asarray(noised))


def _read_mask(path: str) -> np.ndarray:
  from paella_jax.images import load_image
  return load_image(path).mean(-1)


def _read_labels(path: str) -> np.ndarray:
  if path.endswith(".npy"):
    return np.load(path, allow_pickle=False).astype(np.int64)
  from paella_jax.images import load_image
  image = np.round(load_image(path) * 255).astype(np.int64)
  _, labels = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
  return labels.reshape(image.shape[:2])  # one label per distinct colour, in colour order


# ------------------------------------------------------------------------------ running

def run(args) -> str:
  """Samples for `args` and writes the outputs; returns the output folder."""
  import jax
  from paella_jax.sampling import SAMPLER_VERSION, sample
  models = Models(args)
  settings = models.sampler_settings(args)
  inputs = plan(args, models, settings)
  cfg = settings["cfg"] if settings["cfg"] is not None and settings["cfg"] >= 0 else None
  mass = settings["typical_mass"] if settings["typical_mass"] else None
  codes = sample(models.model, models.params, inputs["clip"], jax.random.key(args.seed),
                 steps=settings["steps"], cfg=cfg, typical_mass=mass,
                 typical_min_tokens=settings.get("typical_min_tokens", 1),
                 temperature=tuple(settings["temperature"]),
                 latent_shape=inputs.get("latent_shape", (32, 32)),
                 renoise_mode=settings["renoise_mode"], init_tokens=inputs.get("init_tokens"),
                 mask=inputs.get("mask"), start_step=settings["start_step"])
  codes = np.asarray(codes)
  record = dict(command=args.command, args={k: v for k, v in vars(args).items() if k != "out"},
                sampler=settings, sampler_version=SAMPLER_VERSION,
                checkpoint_id=checkpoint_id(models.description),
                clip_checkpoint=models.clip_dir, vqgan_checkpoint=models.vqgan_dir)
  write_outputs(args.out, codes, models, inputs, record)
  return args.out


def write_outputs(out: str, codes: np.ndarray, models: Models, inputs: dict, record: dict) -> None:
  from paella_jax.images import make_grid, save_gif, save_png
  os.makedirs(out, exist_ok=True)
  np.save(os.path.join(out, "codes.npy"), codes)
  with open(os.path.join(out, "codes.json"), "w") as f:
    json.dump(record, f, indent=2)
  if not models.vqgan_dir:
    print(f"wrote {codes.shape} codes to {out}/codes.npy (no VQGAN given: no images)")
    return
  images = models.codec().decode(codes)
  for i, image in enumerate(images):
    save_png(os.path.join(out, f"{i:04d}.png"), image)
    with open(os.path.join(out, f"{i:04d}.json"), "w") as f:
      json.dump(dict(record, index=i, label=inputs["labels"][i]), f, indent=2)
  columns = record["args"]["batch_size"]  # images per prompt (per frame when interpolating)
  save_png(os.path.join(out, "grid.png"), make_grid(images, columns=columns))
  if record["command"] == "interpolate":
    save_gif(os.path.join(out, "interpolation.gif"), images[::columns])
  print(f"wrote {len(images)} images, grid.png and sidecars to {out}")


def replay(args) -> str:
  """Reruns the command recorded in a sidecar (same seed and settings) into args.out."""
  with open(args.sidecar) as f:
    record = json.load(f)
  recorded = argparse.Namespace(**record["args"], out=args.out)
  from paella_jax.checkpoint import read_model_description
  from paella_jax.sampling import SAMPLER_VERSION
  version = record.get("sampler_version", 1)  # sidecars before the version was recorded: 1
  if version != SAMPLER_VERSION:
    raise SystemExit(f"{args.sidecar} was made by sampler version {version}; this is version "
                     f"{SAMPLER_VERSION}, which draws other codes from the same seed, so it cannot "
                     "regenerate the image exactly (rerun the command to sample anew)")
  if checkpoint_id(read_model_description(recorded.checkpoint)) != record["checkpoint_id"]:
    raise SystemExit(f"{recorded.checkpoint} is not the checkpoint that made {args.sidecar} "
                     "(its model.json changed)")
  return run(recorded)


def main(argv=None):
  args = parse_args(argv)
  if args.command == "replay":
    replay(args)
  else:
    run(args)


if __name__ == "__main__":
  main()
