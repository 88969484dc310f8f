"""paella-convert: PyTorch weights -> paella-jax checkpoints (`paella-convert {paella-v1,
paella-v3,vqgan,clip,t5,inception} ...`), the export back to PyTorch (`paella-convert to-torch
CHECKPOINT OUT`), LoRA adapters merged into their base (`paella-convert merge-lora BASE ADAPTER
OUT`) and a random CLIP (the demo's text encoder: `paella-convert clip-random OUT`).

Each subcommand's arguments are defined here and passed as keywords to its converter module's
`write_checkpoint` (paella_jax/convert/); a module is imported only when its subcommand is used.
`--from-hub REPO [FILE]` takes the converter's source (its first argument) from the Hugging Face
Hub through the local HF cache (see `paella_jax.convert.hub`):

    paella-convert paella-v3 --from-hub dome272/Paella paella_v3.pt OUT
    paella-convert t5 --from-hub google/byt5-xl OUT
"""

from __future__ import annotations

import argparse
import importlib

HUB_FLAG = "--from-hub"


def _paella_v1(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", help="PyTorch state_dict, e.g. model_600000.pt")
  parser.add_argument("out_dir", help="output checkpoint directory (loaded by paella-sample)")
  parser.add_argument("--c-r", type=int, default=64, help="timestep embedding width (64)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")


def _paella_v3(parser: argparse.ArgumentParser) -> None:
  from paella_jax.convert.paella_v3 import RELEASE_NHEAD
  parser.add_argument("checkpoint", help="PyTorch state_dict, e.g. paella_v3.pt")
  parser.add_argument("out_dir", help="output checkpoint directory")
  parser.add_argument("--nhead", type=int, nargs="+", default=list(RELEASE_NHEAD),
                      help="attention heads per level, -1 for levels without attention "
                           "(release: -1 16 16)")
  parser.add_argument("--no-self-attn", dest="self_attn", action="store_false",
                      help="attention over the conditioning only (release: with image tokens)")
  for name, what in (("byt5", "ByT5 encoder (paella-convert t5)"),
                     ("clip", "CLIP-H (paella-convert clip)"),
                     ("vqgan", "f4 VQ (paella-convert vqgan)")):
    parser.add_argument(f"--{name}", help=f"the converted {what} checkpoint directory to "
                        "record in model.json")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")


def _vqgan(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", help="taming/ruDALL-E .ckpt, or a diffusers VQModel / "
                      "PaellaVQModel directory")
  parser.add_argument("out_dir", help="where to write the paella-jax checkpoint")
  parser.add_argument("--resolution", type=int, default=256,
                      help="nominal training resolution of a taming checkpoint (default 256)")
  parser.add_argument("--norm-groups", type=int, default=32,
                      help="GroupNorm groups of a taming checkpoint (default 32)")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _clip(parser: argparse.ArgumentParser) -> None:
  from paella_jax.convert.clip import OPEN_CLIP_ARCHS
  parser.add_argument("src", help="Hugging Face CLIPModel directory or open_clip checkpoint file")
  parser.add_argument("out_dir", help="output checkpoint directory")
  parser.add_argument("--arch", default=None,
                      help=f"open_clip architecture ({', '.join(OPEN_CLIP_ARCHS)}); "
                           "needed for open_clip files")
  parser.add_argument("--text-only", action="store_true",
                      help="keep only the text tower (all that Paella v1 needs)")
  parser.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="storage dtype of the written parameters")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _clip_random(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("out_dir", help="output checkpoint directory")
  parser.add_argument("--config", default="clip_tiny",
                      help="a CLIP config with random_weights (preset name or file; default "
                           "clip_tiny)")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _t5(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("src", help="Hugging Face T5/ByT5 directory (e.g. google/byt5-xl)")
  parser.add_argument("out_dir", help="output checkpoint directory")
  parser.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="storage dtype of the written parameters")
  parser.add_argument("--max-length", type=int, default=768,
                      help="the tokenizer's maximum length in bytes, </s> included")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _inception(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("out_dir", help="where to write the paella-jax checkpoint")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def _to_torch(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("source", metavar="CHECKPOINT",
                      help="paella-jax checkpoint directory (model.json + params), "
                      "e.g. WORKDIR/model from training")
  parser.add_argument("out", help="output: .pt/.pth/.bin (state_dict), .ckpt (taming/Lightning "
                      "{'state_dict': ...}), .safetensors, or no suffix for a diffusers directory")
  parser.add_argument("--upcast", action="store_true",
                      help="write bfloat16 params as float32 (default: as stored)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace OUT if it is a file or a directory this command wrote")


def _merge_lora(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("base", help="paella-jax model directory the adapter was trained on")
  parser.add_argument("adapter", help="LoRA adapter file (.safetensors), PATH or PATH:SCALE")
  parser.add_argument("out_dir", help="output checkpoint directory: the merged model")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


# subcommand: (converter module, its arguments, help)
COMMANDS = {
    "paella-v1": ("paella_jax.convert.paella", _paella_v1,
                  "Paella v1 token predictor (model_600000.pt)"),
    "paella-v3": ("paella_jax.convert.paella_v3", _paella_v3,
                  "Paella v3 token predictor (paella_v3.pt)"),
    "vqgan": ("paella_jax.convert.vqgan", _vqgan,
              "VQGAN: taming/ruDALL-E ckpt or diffusers VQModel dir"),
    "clip": ("paella_jax.convert.clip", _clip,
             "CLIP: Hugging Face CLIPModel dir or open_clip ckpt"),
    "t5": ("paella_jax.convert.t5", _t5, "T5/ByT5 encoder: Hugging Face dir (e.g. google/byt5-xl)"),
    "inception": ("paella_jax.convert.inception", _inception,
                  "FID Inception v3: pytorch-fid's pt_inception-2015-12-05 .pth"),
    "clip-random": ("paella_jax.convert.clip_random", _clip_random,
                    "a CLIP with random seeded weights (the demo's text encoder) + tokenizer"),
    "merge-lora": ("paella_jax.lora", _merge_lora,
                   "a LoRA adapter merged into its base model: a plain checkpoint"),
    "to-torch": ("paella_jax.convert.to_torch", _to_torch,
                 "export: paella-jax checkpoint -> PyTorch .pt/.ckpt/.safetensors or a diffusers "
                 "dir"),
}


def main(argv=None) -> None:
  """Runs one subcommand; bad input raises ValueError/OSError naming the problem."""
  parser = argparse.ArgumentParser(prog="paella-convert",
                                   description="Convert PyTorch weights to paella-jax checkpoints "
                                               "(and back: to-torch).")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (module_name, _, help_text) in COMMANDS.items():
    # add_help=False: "-h" reaches the chosen converter's own parser below.
    p = sub.add_parser(name, help=help_text, add_help=False)
    p.set_defaults(module_name=module_name)
    # Arguments are added only for the chosen command, so a missing optional converter
    # never breaks the others.
  args, rest = parser.parse_known_args(argv)
  module = importlib.import_module(args.module_name)
  cmd_parser = argparse.ArgumentParser(prog=f"paella-convert {args.command}")
  COMMANDS[args.command][1](cmd_parser)
  if not getattr(module, "FROM_HUB", True):
    print(module.write_checkpoint(**vars(cmd_parser.parse_args(rest))))
    return
  source = next(a for a in cmd_parser._actions if not a.option_strings)  # the first positional
  name = source.metavar or source.dest.upper()
  cmd_parser.add_argument(
      HUB_FLAG, metavar="REPO", help=f"take {name} from this Hugging Face Hub repo (through the "
      f"local HF cache): give a FILE of the repo as {name}, or leave it out to take the whole "
      "repo as a directory")
  if any(a == HUB_FLAG or a.startswith(HUB_FLAG + "=") for a in rest):
    source.nargs = "?"  # REPO alone: the whole repo
  command_args = cmd_parser.parse_args(rest)
  if command_args.from_hub:
    from paella_jax.convert.hub import fetch
    setattr(command_args, source.dest,
            fetch(command_args.from_hub, getattr(command_args, source.dest)))
  print(module.write_checkpoint(**{k: v for k, v in vars(command_args).items()
                                    if k != "from_hub"}))
