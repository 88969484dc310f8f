"""Paella v1 token predictor: PyTorch `DenoiseUNet` state_dict -> Flax `DenoiseUNet` params.

The architecture (codebook size, widths, level and block counts, conditioning width) is read
from the tensors' shapes; only c_r (the timestep-embedding width, 64 in the paper) cannot be
told apart from c_clip and is an argument.

    model, params = paella_v1_from_torch("model_600000.pt")
    python -m paella_jax.convert paella-v1 model_600000.pt checkpoints/paella_v1
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from paella_jax.convert.torch_io import (CheckpointMismatchError, load_state_dict, param_shapes,
                                         params_from_state_dict, write_predictor)
from paella_jax.models.paella import DenoiseUNet, build_model, init_params

KIND = "paella_v1"

# How a PyTorch tensor becomes a Flax parameter of shape `s`, and the PyTorch shape expected for
# a Flax shape (the exporter derives the way back from these two; see torch_io).
TO_FLAX = {
    "copy": lambda w, s: w,
    "linear": lambda w, s: w.T,                                  # (out, in) -> (in, out)
    "conv": lambda w, s: w.transpose(2, 3, 1, 0),                # (out, in, kh, kw) -> (kh, kw, in, out)
    "conv_transpose": lambda w, s: w.transpose(2, 3, 0, 1)[::-1, ::-1],  # (in, out, kh, kw), flipped
    "scalar": lambda w, s: w.reshape(()),                         # (1, 1, 1) -> ()
}
TORCH_SHAPE = {
    "copy": lambda s: s,
    "linear": lambda s: s[::-1],
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "conv_transpose": lambda s: (s[2], s[3], s[0], s[1]),
    "scalar": lambda s: (1, 1, 1),
}

_RESBLOCK = [  # (torch suffix, flax path inside the block, transform)
    ("gamma", ("layer_scale",), "copy"),
    ("depthwise.1.weight", ("depthwise", "kernel"), "conv"),
    ("depthwise.1.bias", ("depthwise", "bias"), "copy"),
    ("ln.gamma", ("norm", "gamma"), "scalar"),
    ("ln.beta", ("norm", "beta"), "scalar"),
    ("ln.ln.weight", ("norm", "ln", "scale"), "copy"),
    ("ln.ln.bias", ("norm", "ln", "bias"), "copy"),
    ("channelwise.0.weight", ("mlp_in", "kernel"), "linear"),
    ("channelwise.0.bias", ("mlp_in", "bias"), "copy"),
    ("channelwise.2.weight", ("mlp_out", "kernel"), "linear"),
    ("channelwise.2.bias", ("mlp_out", "bias"), "copy"),
    ("cond_mapper.weight", ("cond_mapper", "kernel"), "linear"),
    ("cond_mapper.bias", ("cond_mapper", "bias"), "copy"),
]


def key_map(model: DenoiseUNet) -> list[tuple[str, tuple[str, ...], str]]:
  """Every (torch key, flax path, transform) of the model: the whole checkpoint layout."""
  entries = [("embedding.weight", ("embedding", "embedding"), "copy")]

  def conv(torch_prefix, flax_name, kind):
    entries.append((f"{torch_prefix}.weight", (flax_name, "kernel"), kind))
    entries.append((f"{torch_prefix}.bias", (flax_name, "bias"), "copy"))

  def block(torch_prefix, flax_name):
    entries.extend((f"{torch_prefix}.{suffix}", (flax_name,) + path, kind)
                   for suffix, path, kind in _RESBLOCK)

  for i, n in enumerate(model.down_levels):
    offset = 1 if i > 0 else 0
    if i > 0:
      conv(f"down_blocks.{i}.0", f"down_{i}_downsample", "conv")
    for j in range(n):
      block(f"down_blocks.{i}.{j + offset}", f"down_{i}_block_{j}")
  for i, n in enumerate(model.up_levels):
    for j in range(n):
      block(f"up_blocks.{i}.{j}", f"up_{i}_block_{j}")
    if i < len(model.up_levels) - 1:
      conv(f"up_blocks.{i}.{n}", f"up_{i}_upsample", "conv_transpose")
  conv("clf", "clf", "conv")
  return entries


def infer_architecture(sd: Mapping[str, np.ndarray], c_r: int = 64) -> dict[str, Any]:
  """Reads num_labels, c_hidden, c_clip and the level/block counts from tensor shapes."""
  for key in ("embedding.weight", "clf.weight", "down_blocks.0.0.cond_mapper.weight"):
    if key not in sd:
      raise CheckpointMismatchError(
          f"not a Paella v1 DenoiseUNet checkpoint: key {key!r} is missing "
          f"(found e.g. {sorted(sd)[:5]})")
  num_labels = sd["embedding.weight"].shape[0]
  indices = {}
  for key in sd:
    m = re.match(r"(down|up)_blocks\.(\d+)\.(\d+)\.", key)
    if m:
      indices.setdefault((m[1], int(m[2])), set()).add(int(m[3]))
  levels = 1 + max(i for (_, i) in indices)
  counts = {(path, i): len(indices.get((path, i), ())) for path in ("down", "up")
            for i in range(levels)}
  down_levels = [counts["down", i] - (1 if i > 0 else 0) for i in range(levels)]
  up_levels = [counts["up", i] - (1 if i < levels - 1 else 0) for i in range(levels)]
  c_cond = sd["down_blocks.0.0.cond_mapper.weight"].shape[1]
  # The last level's width: its downsampling conv's output channels (or the embedding's).
  c_hidden = (sd[f"down_blocks.{levels - 1}.0.weight"].shape[0] if levels > 1
              else sd["embedding.weight"].shape[1])
  if c_cond <= c_r:
    raise CheckpointMismatchError(f"conditioning width {c_cond} (c_clip + c_r) is not larger "
                                  f"than c_r={c_r}: pass the checkpoint's timestep-embedding "
                                  "width with --c-r")
  return dict(num_labels=num_labels, c_hidden=c_hidden, c_clip=c_cond - c_r, c_r=c_r,
              down_levels=down_levels, up_levels=up_levels)


def paella_v1_from_torch(path_or_state_dict, c_r: int = 64, dtype=jnp.float32
                         ) -> tuple[DenoiseUNet, dict]:
  """Builds the Flax model and its params from a Paella v1 checkpoint (path or state_dict).

  Returns (model, params) with float32 numpy params; `dtype` is the model's compute dtype.
  Raises CheckpointMismatchError naming missing, unexpected and mis-shaped keys when the
  checkpoint is not a v1 DenoiseUNet.
  """
  sd = load_state_dict(path_or_state_dict)
  model = build_model(dict(infer_architecture(sd, c_r), dtype=dtype))
  return model, params_from_state_dict(sd, model)


def flax_shapes(model: DenoiseUNet) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shapes of the model's params by path (the smallest latent: 2 ** levels)."""
  return param_shapes(model, init_params, 2 ** len(model.down_levels))


def write_checkpoint(*, checkpoint: str, out_dir: str, c_r: int = 64,
                     overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  model, params = paella_v1_from_torch(checkpoint, c_r=c_r)
  return write_predictor(KIND, model, params, checkpoint, out_dir, overwrite)
