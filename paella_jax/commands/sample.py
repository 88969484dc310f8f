"""Sample images from a paella-jax checkpoint: generation and the paper's editing modes.

    paella-sample --prompt "a blue square in the bottom right"   # (or python sample.py ...)
    python sample.py --prompt "a blue square in the bottom right"          # generate (default)
    python sample.py generate --prompt "a fox" --batch-size 4 --seed 1 --cfg 5 --steps 8
    python sample.py inpaint --image in.png --box 8 8 24 24 --prompt "a red circle"
    python sample.py inpaint --image in.png --mask mask.png --prompt "..."
    python sample.py outpaint --image in.png --canvas 32 64 --offset 0 16 --prompt "..."
    python sample.py edit --image in.png --prompt "..." --start-step 8 --steps 24
    python sample.py vary --image in.png --batch-size 4
    python sample.py interpolate --prompt "a red circle" --prompt "a blue circle" --frames 8
    python sample.py multi --prompt "a red circle" --prompt "a blue square" --layout columns
    python sample.py replay outputs/000/0001.json --out again/           # regenerate exactly
    python sample.py --checkpoint ckpts/paella_v3 --prompt "a fox" --negative-prompt "blurry"

Every command writes, into --out or a fresh numbered folder under outputs/, NNNN.png per image
with a JSON sidecar (all arguments, the seed, every sampler setting and the sampler version, the
checkpoint ids: enough to regenerate the image bit for bit with `replay`), grid.png, codes.npy
and codes.json; `interpolate` also writes interpolation.gif. A non-empty --out is refused unless
--overwrite, which replaces only the files this command writes.
Paella v1 and v3 checkpoints take the same commands (model.json names the family), except
`multi` (v1 only: v3 has no spatial conditioning). The model's checkpoint records its CLIP, VQGAN
and, for v3, ByT5 encoder (--clip/--vqgan/--byt5 override them). v3 guides against the empty
prompt's conditioning, or --negative-prompt's; v1 guides against zero conditioning and refuses a
negative prompt. Sampler defaults come from the checkpoint's model.json, per mode (for v1 the
paper's: cfg 5 to generate, 4 to interpolate and outpaint, 6 to inpaint and edit; editing runs 24
steps from step 8 with renoise 'prev'; for v3 the release's: 12 steps, cfg 8, temperature 0.7 to
0.3, no typical filtering); any of them can be overridden ("off" turns guidance or typical
filtering off).
Expected failures print one line `error: ...` (exit 2); --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from paella_jax.commands.options import add_model_options, number_or_off

COMMANDS = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate", "multi")
PATH_ARGS = ("checkpoint", "clip", "vqgan", "byt5", "embeddings", "image", "mask", "labels")
SETTING_ARGS = ("steps", "cfg", "typical_mass", "typical_min_tokens", "temperature",
                "renoise_mode", "start_step")
DEFAULT_OUT = "outputs"
DEFAULT_CHECKPOINT = "runs/demo/paella/model"  # the demo's model


# ------------------------------------------------------------------------------ arguments

def _common(p: argparse.ArgumentParser) -> None:
  add_model_options(p, DEFAULT_CHECKPOINT)
  p.add_argument("--negative-prompt", help="Paella v3: guide away from this prompt instead of "
                 "the empty one")
  p.add_argument("--batch-size", dest="num_images", type=int, default=4,
                 help="images per prompt / input")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, help="denoising steps T")
  p.add_argument("--start-step", type=int, help="first step to run (editing strength)")
  p.add_argument("--cfg", type=number_or_off, help="guidance weight, or 'off'")
  p.add_argument("--typical-mass", type=number_or_off,
                 help="typical filtering mass in (0, 1], or 'off'")
  p.add_argument("--typical-min-tokens", type=int, help="codes typical filtering always keeps")
  p.add_argument("--temperature", type=float, nargs=2, metavar=("START", "END"))
  p.add_argument("--renoise-mode", choices=("start", "prev", "rand"))
  p.add_argument("--out", help="output folder (default: a new numbered folder in outputs/)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace the outputs of an earlier run in --out")


def _parser() -> argparse.ArgumentParser:
  """The argument parser: one subcommand per mode, and replay."""
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
    parsers[name].add_argument("--prompt", dest="prompts", action="append", default=[],
                               help="repeatable")
  parsers["generate"].add_argument("--embeddings", help="conditioning instead of prompts: v1 "
                                   ".npy of (N, C) or (N, h', w', C); v3 .npz of byt5, byt5_mask, "
                                   "clip, clip_image rows (any absent)")
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
  parsers["multi"].add_argument("--label-map", dest="labels", help=".npy or image of region labels "
                                "0..P-1 (any size; resized to the latent)")
  parsers["multi"].add_argument("--blend", type=float, default=1.0,
                                help="border softness in tokens (0 = hard)")
  parsers["multi"].add_argument("--latent-shape", type=int, nargs=2, metavar=("H", "W"))
  replay = sub.add_parser("replay", help="regenerate the images of a JSON sidecar exactly")
  replay.add_argument("sidecar")
  replay.add_argument("--out", default="replay")
  replay.add_argument("--overwrite", action="store_true")
  return parser


def parse_args(argv=None) -> argparse.Namespace:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS + ("replay", "-h", "--help"):
    argv = ["generate"] + argv  # `python sample.py --prompt ...` generates
  args = _parser().parse_args(argv)
  for name in PATH_ARGS:  # sidecars record absolute paths, so replays work from anywhere
    if getattr(args, name, None):
      setattr(args, name, os.path.abspath(getattr(args, name)))
  return args


# ------------------------------------------------------------------------------ running

def to_request(args: argparse.Namespace):
  """The typed request of a mode's arguments."""
  from paella_jax import request
  cls = request.REQUESTS[args.command]
  names = {f.name for f in dataclasses.fields(cls)} - {"settings"}
  fields = {k: v for k, v in vars(args).items() if k in names}
  if args.command == "generate" and not fields["prompts"]:
    fields["prompts"] = None  # embeddings, or unconditional samples
  return cls(**fields, settings={k: getattr(args, k) for k in SETTING_ARGS})


OUR_FILES = re.compile(r"^(\d{4}\.(png|json)|grid\.png|codes\.(npy|json)|interpolation\.gif)$")


def output_dir(args) -> str:
  """The folder this run writes: --out (refused when it holds files, unless --overwrite, which
  removes only files this script writes), or a fresh numbered folder under outputs/."""
  if args.out is None:
    os.makedirs(DEFAULT_OUT, exist_ok=True)
    taken = [int(n) for n in os.listdir(DEFAULT_OUT) if n.isdigit()]
    out = os.path.join(DEFAULT_OUT, f"{max(taken, default=-1) + 1:03d}")
    os.makedirs(out)
    return out
  if os.path.isdir(args.out) and os.listdir(args.out):
    if not args.overwrite:
      raise FileExistsError(f"{args.out} is not empty; pass --overwrite to replace the outputs of "
                            "an earlier run there, or choose another --out")
    others = [n for n in os.listdir(args.out) if not OUR_FILES.match(n)]
    if others:
      shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
      raise FileExistsError(f"{args.out} holds files sample.py did not write ({shown}); "
                            "choose another --out")
    for name in os.listdir(args.out):
      os.remove(os.path.join(args.out, name))
  os.makedirs(args.out, exist_ok=True)
  return args.out


def run(args) -> str:
  """Samples for `args` and writes the outputs; returns the output folder."""
  req = to_request(args)
  return _sample(args.checkpoint, args.clip, args.vqgan, args.byt5, args.lora, args.quantize,
                 req, args)


def _sample(checkpoint: str, clip, vqgan, byt5, lora, quantize, req, args, adapters=None) -> str:
  """Samples `req` with the model (its LoRA adapters merged, its weights in `quantize`) and
  writes the run; `adapters`: the sha256 each adapter file must have (a replay), in order."""
  from paella_jax.pipeline import Pipeline
  from paella_jax.sidecars import run_record, write_run
  pipe = Pipeline.from_checkpoint(checkpoint, clip=clip, vqgan=vqgan, byt5=byt5, lora=lora,
                                  quantize=quantize)
  for adapter, digest in zip(pipe.adapters, adapters or ()):
    if adapter["sha256"] != digest:
      raise ValueError(f"the LoRA adapter {adapter['path']} changed since the image was made "
                       "(another sha256), so it cannot be regenerated exactly")
  result = pipe.run(req)
  out = output_dir(args)
  write_run(out, result, run_record(pipe, req, result.settings), columns=req.num_images)
  return out


def replay(args) -> str:
  """Reruns the request recorded in a sidecar (same seed and settings) into args.out."""
  from paella_jax.sidecars import load_replay
  recorded = load_replay(args.sidecar)
  return _sample(recorded.checkpoint, recorded.clip, recorded.vqgan, recorded.byt5,
                 recorded.adapters, recorded.quantize, recorded.request, args,
                 [a.get("sha256") for a in recorded.lora])


def main(argv=None) -> str:
  """Runs one command; bad input raises ValueError/OSError naming the problem."""
  args = parse_args(argv)
  return replay(args) if args.command == "replay" else run(args)

