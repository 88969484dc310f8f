"""Argument types and options the commands share, spelled and meaning the same everywhere."""

from __future__ import annotations

import argparse
import math
import os

from paella_jax.quantize import QUANTIZATIONS
from paella_jax.sampler_settings import OFF


def number_or_off(text: str) -> float | str:
  """A finite float, or "off" (guidance or typical filtering off)."""
  if text == OFF:
    return text
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number or '{OFF}', got {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return value


def add_model_options(parser: argparse.ArgumentParser, default_checkpoint: str | None) -> None:
  """--checkpoint, the encoders a model directory records (--clip, --vqgan, --byt5), LoRA
  adapters (--lora) and the weights' precision (--quantize)."""
  parser.add_argument("--checkpoint", default=default_checkpoint, required=not default_checkpoint,
                      help="model directory written by paella-train or paella-convert")
  parser.add_argument("--clip", help="CLIP checkpoint directory (default: the model's)")
  parser.add_argument("--vqgan", help="VQGAN checkpoint directory (default: the model's)")
  parser.add_argument("--byt5", help="ByT5 encoder checkpoint directory of a Paella v3 model "
                      "(default: the model's)")
  parser.add_argument("--lora", action="append", type=lora_option, default=[],
                      metavar="PATH[:SCALE]", help="a LoRA adapter merged into the model at "
                      "SCALE (default 1); repeatable, applied in order")
  parser.add_argument("--quantize", choices=QUANTIZATIONS,
                      help="hold the predictor, CLIP and ByT5 weights in bfloat16, or int8 "
                      "(weight-only, bfloat16 compute; docs/sampling.md#precision); default: "
                      "the checkpoints' own dtypes")


def lora_option(text: str) -> tuple[str, float]:
  """--lora PATH[:SCALE] -> (absolute path, scale)."""
  from paella_jax.lora import parse_lora
  try:
    path, scale = parse_lora(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return os.path.abspath(path), scale
