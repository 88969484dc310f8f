"""Command line for the converters: `python -m paella_jax.convert {paella-v1,vqgan,clip,inception} ...`,
for the export back to PyTorch: `python -m paella_jax.convert to-torch CHECKPOINT OUT`, and for
a random CLIP (the demo's text encoder): `python -m paella_jax.convert clip-random OUT`.

Each converter module exposes `add_arguments(parser)` and `run(args)`; they are imported only
when their subcommand is used. `--from-hub REPO [FILE]` takes the converter's source (its first
argument) from the Hugging Face Hub through the local HF cache (see `paella_jax.convert.hub`):

    python -m paella_jax.convert paella-v3 --from-hub dome272/Paella paella_v3.pt OUT
    python -m paella_jax.convert t5 --from-hub google/byt5-xl OUT
"""

import argparse
import importlib

HUB_FLAG = "--from-hub"
COMMANDS = {
    "paella-v1": ("paella_jax.convert.paella", "Paella v1 token predictor (model_600000.pt)"),
    "paella-v3": ("paella_jax.convert.paella_v3", "Paella v3 token predictor (paella_v3.pt)"),
    "vqgan": ("paella_jax.convert.vqgan", "VQGAN: taming/ruDALL-E ckpt or diffusers VQModel dir"),
    "clip": ("paella_jax.convert.clip", "CLIP: Hugging Face CLIPModel dir or open_clip ckpt"),
    "t5": ("paella_jax.convert.t5", "T5/ByT5 encoder: Hugging Face dir (e.g. google/byt5-xl)"),
    "inception": ("paella_jax.convert.inception",
                  "FID Inception v3: pytorch-fid's pt_inception-2015-12-05 .pth"),
    "clip-random": ("paella_jax.convert.clip_random",
                    "a CLIP with random seeded weights (the demo's text encoder) + tokenizer"),
    "to-torch": ("paella_jax.convert.to_torch",
                 "export: paella-jax checkpoint -> PyTorch .pt/.ckpt/.safetensors or diffusers dir"),
}


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m paella_jax.convert",
                                   description="Convert PyTorch weights to paella-jax checkpoints "
                                               "(and back: to-torch).")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (module_name, help_text) in COMMANDS.items():
    # add_help=False: "-h" reaches the chosen converter's own parser below.
    p = sub.add_parser(name, help=help_text, add_help=False)
    p.set_defaults(module_name=module_name)
    # Arguments are added only for the chosen command, so a missing optional converter
    # never breaks the others.
  args, rest = parser.parse_known_args(argv)
  module = importlib.import_module(args.module_name)
  cmd_parser = argparse.ArgumentParser(prog=f"python -m paella_jax.convert {args.command}")
  module.add_arguments(cmd_parser)
  if not getattr(module, "FROM_HUB", True):
    module.run(cmd_parser.parse_args(rest))
    return
  source = next(a for a in cmd_parser._actions if not a.option_strings)  # the first positional
  cmd_parser.add_argument(
      HUB_FLAG, metavar="REPO", help=f"take {source.dest.upper()} from this Hugging Face Hub "
      f"repo (through the local HF cache): give a FILE of the repo as {source.dest.upper()}, or "
      "leave it out to take the whole repo as a directory")
  if any(a == HUB_FLAG or a.startswith(HUB_FLAG + "=") for a in rest):
    source.nargs = "?"  # REPO alone: the whole repo
  command_args = cmd_parser.parse_args(rest)
  if command_args.from_hub:
    from paella_jax.convert.hub import fetch
    setattr(command_args, source.dest,
            fetch(command_args.from_hub, getattr(command_args, source.dest)))
  module.run(command_args)


if __name__ == "__main__":
  from paella_jax.cli import run_main
  run_main(main)
