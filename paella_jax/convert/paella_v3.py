"""Paella v3 token predictor: PyTorch `Paella` state_dict (paella_v3.pt) -> Flax `PaellaV3` params.

The architecture (codebook, widths, levels, block letters and counts, c_r, patch size, kernel
size, conditioning and embedding sizes) is read from the tensors' shapes; the number of attention
heads per level and whether attention includes the image tokens (self_attn) are not in the
tensors and are arguments (defaults: the release's).

    model, params = paella_v3_from_torch("paella_v3.pt")
    python -m paella_jax.convert paella-v3 paella_v3.pt checkpoints/paella_v3 \
        --byt5 checkpoints/byt5_xl --clip checkpoints/clip_vit_h14 --vqgan checkpoints/vqgan_f4

With --byt5/--clip/--vqgan the model.json records its encoders (paths relative to the model
directory), so that `sample.py --checkpoint checkpoints/paella_v3` finds them.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from paella_jax.convert.torch_io import (CheckpointMismatchError, load_state_dict, param_shapes,
                                         params_from_state_dict, write_predictor)
from paella_jax.models.paella_v3 import PaellaV3, build_model, init_params, level_blocks

KIND = "paella_v3"
RELEASE_NHEAD = (-1, 16, 16)


def _heads(shape):  # flax (c, n, hd) or (n, hd): the torch rows of one of q, k, v
  return int(np.prod(shape[1:])) if len(shape) == 3 else int(np.prod(shape))


# How a PyTorch tensor becomes a Flax parameter of shape `s`, and the PyTorch shape expected for
# a Flax shape. q/k/v take their third of MultiheadAttention's packed input projection.
TO_FLAX = {
    "copy": lambda w, s: w,
    "linear": lambda w, s: w.T,
    "conv": lambda w, s: w.transpose(2, 3, 1, 0),             # (out, in, kh, kw) -> (kh, kw, in, out)
    "conv_transpose": lambda w, s: w.transpose(2, 3, 0, 1),   # (in, out, kh, kw), kernel = stride
    "unshuffle": lambda w, s: w.reshape(s[3], s[2], s[0], s[1]).transpose(2, 3, 1, 0),
    "shuffle": lambda w, s: w.reshape(s[3], s[0], s[1], s[2]).transpose(1, 2, 3, 0),
    "shuffle_bias": lambda w, s: w.reshape(s[2], s[0], s[1]).transpose(1, 2, 0),
    "conv1x1_linear": lambda w, s: w[:, :, 0, 0].T,
    "grn": lambda w, s: w.reshape(-1),
    **{f"{n}_weight": (lambda i: lambda w, s: np.split(w, 3)[i].T.reshape(s))(i)
       for i, n in enumerate("qkv")},
    **{f"{n}_bias": (lambda i: lambda w, s: np.split(w, 3)[i].reshape(s))(i)
       for i, n in enumerate("qkv")},
    "attn_out": lambda w, s: w.T.reshape(s),
}
TORCH_SHAPE = {
    "copy": lambda s: s,
    "linear": lambda s: s[::-1],
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "conv_transpose": lambda s: (s[2], s[3], s[0], s[1]),
    "unshuffle": lambda s: (s[3], s[2] * s[0] * s[1], 1, 1),
    "shuffle": lambda s: (s[3] * s[0] * s[1], s[2], 1, 1),
    "shuffle_bias": lambda s: (s[2] * s[0] * s[1],),
    "conv1x1_linear": lambda s: (s[1], s[0], 1, 1),
    "grn": lambda s: (1, 1, 1, s[0]),
    **{f"{n}_weight": lambda s: (3 * _heads(s), s[0]) for n in "qkv"},
    **{f"{n}_bias": lambda s: (3 * _heads(s),) for n in "qkv"},
    "attn_out": lambda s: (s[2], s[0] * s[1]),
}

_MLP = [("channelwise.0.weight", ("mlp", "mlp_in", "kernel"), "linear"),
        ("channelwise.0.bias", ("mlp", "mlp_in", "bias"), "copy"),
        ("channelwise.2.gamma", ("mlp", "grn", "gamma"), "grn"),
        ("channelwise.2.beta", ("mlp", "grn", "beta"), "grn"),
        ("channelwise.4.weight", ("mlp", "mlp_out", "kernel"), "linear"),
        ("channelwise.4.bias", ("mlp", "mlp_out", "bias"), "copy")]
_BLOCKS = {  # letter -> [(torch suffix, flax path inside the block, transform)]
    "C": [("depthwise.weight", ("depthwise", "kernel"), "conv"),
          ("depthwise.bias", ("depthwise", "bias"), "copy")] + _MLP,
    "F": _MLP,
    "T": [("mapper.weight", ("mapper", "kernel"), "linear"),
          ("mapper.bias", ("mapper", "bias"), "copy")],
    "A": [("kv_mapper.1.weight", ("kv_mapper", "kernel"), "linear"),
          ("kv_mapper.1.bias", ("kv_mapper", "bias"), "copy"),
          ("attention.attn.out_proj.weight", ("out", "kernel"), "attn_out"),
          ("attention.attn.out_proj.bias", ("out", "bias"), "copy")]
         + [("attention.attn.in_proj_weight", (name, "kernel"), f"{n}_weight")
            for n, name in zip("qkv", ("query", "key", "value"))]
         + [("attention.attn.in_proj_bias", (name, "bias"), f"{n}_bias")
            for n, name in zip("qkv", ("query", "key", "value"))],
}


def key_map(model: PaellaV3) -> list[tuple[str, tuple[str, ...], str]]:
  """Every (torch key, flax path, transform) of the model: the whole checkpoint layout."""
  entries = [("in_mapper.0.weight", ("in_mapper", "embedding"), "copy"),
             ("embedding.1.weight", ("embedding", "kernel"), "unshuffle"),
             ("embedding.1.bias", ("embedding", "bias"), "copy"),
             ("clf.1.weight", ("clf", "kernel"), "shuffle"),
             ("clf.1.bias", ("clf", "bias"), "shuffle_bias"),
             ("out_mapper.1.weight", ("out_mapper", "kernel"), "conv1x1_linear")]
  for name in ("byt5_mapper", "clip_mapper", "clip_image_mapper"):
    entries += [(f"{name}.weight", (name, "kernel"), "linear"),
                (f"{name}.bias", (name, "bias"), "copy")]

  def block(torch_prefix, flax_name, letter):
    entries.extend((f"{torch_prefix}.{suffix}", (flax_name,) + path, kind)
                   for suffix, path, kind in _BLOCKS[letter])

  levels = len(model.c_hidden)
  for i in range(levels):
    offset = 1 if i > 0 else 0
    if i > 0:
      entries += [(f"down_blocks.{i}.0.1.weight", (f"down_{i}_downsample", "kernel"), "conv"),
                  (f"down_blocks.{i}.0.1.bias", (f"down_{i}_downsample", "bias"), "copy")]
    for j, letter in enumerate(level_blocks(model.level_config, model.blocks, i)):
      block(f"down_blocks.{i}.{j + offset}", f"down_{i}_block_{j}", letter)
  for u, i in enumerate(reversed(range(levels))):
    letters = level_blocks(model.level_config, model.blocks, i)
    for j, letter in enumerate(letters):
      block(f"up_blocks.{u}.{j}", f"up_{i}_block_{j}", letter)
    if i > 0:
      name = f"up_{i}_upsample"
      entries += [(f"up_blocks.{u}.{len(letters)}.1.weight", (name, "kernel"), "conv_transpose"),
                  (f"up_blocks.{u}.{len(letters)}.1.bias", (name, "bias"), "copy")]
  return entries


def _block_letter(sd: Mapping[str, np.ndarray], prefix: str) -> str | None:
  for suffix, letter in (("depthwise.weight", "C"), ("mapper.weight", "T"),
                         ("attention.attn.in_proj_weight", "A"), ("channelwise.0.weight", "F")):
    if f"{prefix}.{suffix}" in sd:
      return letter
  return None


def _pattern(letters: str) -> tuple[str, int]:
  """The shortest pattern whose repetition gives `letters`, and its count."""
  for n in range(1, len(letters) + 1):
    if len(letters) % n == 0 and letters[:n] * (len(letters) // n) == letters:
      return letters[:n], len(letters) // n
  raise CheckpointMismatchError("a level without blocks")


def infer_architecture(sd: Mapping[str, np.ndarray], nhead: Sequence[int] = RELEASE_NHEAD,
                       self_attn: bool = True, c_r: int = 64) -> dict[str, Any]:
  """Reads every shape-determined field of `Paella` from the tensors; `c_r` is used only when
  the model has no timestep block to read it from."""
  required = ("in_mapper.0.weight", "embedding.1.weight", "out_mapper.1.weight",
              "byt5_mapper.weight", "clip_mapper.weight", "down_blocks.0.0.depthwise.weight")
  for key in required:
    if key not in sd:
      raise CheckpointMismatchError(
          f"not a Paella v3 checkpoint: key {key!r} is missing (found e.g. {sorted(sd)[:5]})")
  num_labels, c_in = sd["in_mapper.0.weight"].shape
  c_cond, byt5_embd = sd["byt5_mapper.weight"].shape
  clip_rows, clip_embd = sd["clip_mapper.weight"].shape
  levels = 1 + max(int(m[1]) for k in sd for m in [re.match(r"down_blocks\.(\d+)\.", k)] if m)
  c_hidden, level_config, blocks = [], [], []
  for i in range(levels):
    indices = sorted({int(m[1]) for k in sd
                      for m in [re.match(rf"down_blocks\.{i}\.(\d+)\.", k)] if m})
    letters = [_block_letter(sd, f"down_blocks.{i}.{j}") for j in indices[1 if i else 0:]]
    if not letters or None in letters:
      raise CheckpointMismatchError(f"down level {i}: unrecognised blocks at indices {indices}")
    pattern, count = _pattern("".join(letters))
    level_config.append(pattern)
    blocks.append(count)
    first = f"down_blocks.{i}.{1 if i else 0}"
    width = {"C": lambda: sd[f"{first}.depthwise.weight"].shape[0],
             "T": lambda: sd[f"{first}.mapper.weight"].shape[0] // 2,
             "A": lambda: sd[f"{first}.attention.attn.out_proj.weight"].shape[0],
             "F": lambda: sd[f"{first}.channelwise.0.weight"].shape[1]}[letters[0]]()
    c_hidden.append(int(width))
  mappers = [k for k in sd if k.endswith(".mapper.weight")]
  depthwise = [k for k in sd if k.endswith(".depthwise.weight")]
  c_patch = sd["embedding.1.weight"].shape[1]
  patch_size = int(round((c_patch / c_in) ** 0.5))
  if patch_size ** 2 * c_in != c_patch:
    raise CheckpointMismatchError(f"embedding.1.weight has {c_patch} input channels, not "
                                  f"c_in={c_in} times a square patch")
  nhead = tuple(int(n) for n in nhead)
  if len(nhead) != levels:
    raise CheckpointMismatchError(f"the checkpoint has {levels} levels but nhead={nhead}")
  return dict(num_labels=int(num_labels), c_in=int(c_in),
              c_out=int(sd["out_mapper.1.weight"].shape[1]),
              c_r=int(sd[mappers[0]].shape[1]) if mappers else c_r, patch_size=patch_size,
              c_cond=int(c_cond), c_hidden=c_hidden, nhead=list(nhead), blocks=blocks,
              level_config=level_config, clip_embd=int(clip_embd), byt5_embd=int(byt5_embd),
              clip_seq_len=int(clip_rows // c_cond),
              kernel_size=int(sd[depthwise[0]].shape[-1]), self_attn=bool(self_attn))


def paella_v3_from_torch(path_or_state_dict, nhead: Sequence[int] = RELEASE_NHEAD,
                         self_attn: bool = True, c_r: int = 64, dtype=jnp.float32
                         ) -> tuple[PaellaV3, dict]:
  """Builds the Flax model and its params from a Paella v3 checkpoint (path or state_dict).

  Accepts raw state_dicts, {"state_dict": ...} (the training script's files) and
  DistributedDataParallel's "module." prefix. Returns (model, params) with float32 numpy params;
  `dtype` is the model's compute dtype. Raises CheckpointMismatchError naming missing,
  unexpected and mis-shaped keys when the checkpoint is not a v3 `Paella`.
  """
  sd = load_state_dict(path_or_state_dict)
  model = build_model(dict(infer_architecture(sd, nhead, self_attn, c_r), dtype=dtype))
  return model, params_from_state_dict(sd, model)


def flax_shapes(model: PaellaV3) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shapes of the model's params by path (the smallest latent: the latent factor)."""
  return param_shapes(model, init_params, model.latent_factor)


def encoder_records(out_dir: str, **paths: str | None) -> dict[str, str]:
  """model.json meta entries naming a model's encoders, e.g. {"clip_checkpoint": "../clip"}:
  each given path relative to the model directory `out_dir` (`checkpoint.recorded_path`
  resolves them)."""
  return {f"{key}_checkpoint": os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
          for key, path in paths.items() if path}


def write_checkpoint(*, checkpoint: str, out_dir: str, nhead=RELEASE_NHEAD,
                     self_attn: bool = True, byt5: str | None = None, clip: str | None = None,
                     vqgan: str | None = None, overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  model, params = paella_v3_from_torch(checkpoint, nhead=nhead, self_attn=self_attn)
  return write_predictor(KIND, model, params, checkpoint, out_dir, overwrite,
                         **encoder_records(out_dir, byt5=byt5, clip=clip, vqgan=vqgan))
