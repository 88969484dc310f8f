"""`paella-convert clip-random --config clip_tiny OUT`: a CLIP with RANDOM seeded weights (the
demo's frozen text encoder) saved as a checkpoint with its tokenizer, for `paella-prepare --clip`
and `paella-sample --clip`. The weights depend only on the config's model and seed."""

from __future__ import annotations

import argparse

FROM_HUB = False  # nothing to fetch: no --from-hub


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("out_dir", help="output checkpoint directory")
  parser.add_argument("--config", default="clip_tiny",
                      help="a CLIP config with random_weights (preset name or file; default "
                           "clip_tiny)")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run(args: argparse.Namespace) -> None:
  from paella_jax.configs import load
  from paella_jax.encoders.clip import save_random_clip
  out = save_random_clip(args.out_dir, load(args.config), overwrite=args.overwrite)
  print(f"random CLIP ({args.config}) written to {out}")
