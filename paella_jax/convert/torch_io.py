"""Reading PyTorch checkpoints into numpy, and checking them against an expected layout.

torch is imported lazily: it is needed only to read `.pt`/`.ckpt` pickles, never to train or sample.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not match the architecture asked for."""


def load_torch_file(path: str | os.PathLike) -> dict[str, Any]:
  """Loads a `.pt`/`.ckpt`/`.bin` pickle (weights only) or a `.safetensors` file as a dict.

  Raises FileNotFoundError for a missing file and ValueError naming the file when it is
  truncated or not a checkpoint at all.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types
      raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # truncated zip, wrong format, pickle with code...
    raise ValueError(f"{path} could not be read as a PyTorch checkpoint "
                     f"(truncated or not a weights file?): {e}") from e
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
  return dict(obj)


def to_numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts every tensor of a flat state_dict to a float32/int numpy array (on the CPU)."""
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):  # a torch.Tensor
      value = value.detach().cpu()
      if value.is_floating_point():
        value = value.float()
      value = value.numpy()
    out[key] = np.asarray(value)
  return out


def check_state_dict(state_dict: Mapping[str, np.ndarray],
                     expected_shapes: Mapping[str, tuple[int, ...]],
                     what: str) -> None:
  """Raises CheckpointMismatchError listing missing, unexpected and mis-shaped keys."""
  missing = sorted(set(expected_shapes) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected_shapes))
  wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(s)}"
                 for k, s in expected_shapes.items()
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(s))
  if missing or unexpected or wrong:
    lines = [f"checkpoint does not match {what}:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", wrong)):
      if items:
        shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        lines.append(f"  {title}: {shown}")
    raise CheckpointMismatchError("\n".join(lines))


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The state_dict inside a training checkpoint ({"state_dict": ...}), without
  DistributedDataParallel's "module." prefix."""
  if isinstance(state_dict.get("state_dict"), Mapping):
    state_dict = state_dict["state_dict"]
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  """tree[path[0]][path[1]]... = value, creating the nested dicts on the way."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def load_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
  """A checkpoint file's (or a given) state_dict as numpy arrays, unwrapped from
  {"state_dict": ...} and DistributedDataParallel's "module." prefix."""
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    path_or_state_dict = load_torch_file(path_or_state_dict)
  return to_numpy_state_dict(unwrap_state_dict(path_or_state_dict))


def param_shapes(model, init_params, side: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shapes of a token predictor's params by path, from an abstract (eval_shape)
  initialisation `init_params(model, rng, (side, side))` (side: the smallest latent it takes)."""
  import jax
  from flax.traverse_util import flatten_dict
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (side, side)))
  return {k: tuple(v.shape) for k, v in flatten_dict(abstract).items()}


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], model) -> dict:
  """The Flax params of a token predictor from a PyTorch state_dict, through its family's
  converter module (`Family.converter`), which holds:

    key_map(model)     (torch key, flax path, kind) triples: the whole checkpoint layout
    flax_shapes(model) the Flax shapes by path
    TORCH_SHAPE[kind](flax shape) -> the PyTorch shape
    TO_FLAX[kind](tensor, flax shape) -> the Flax array

  The state_dict is checked first (`check_state_dict`, naming missing, unexpected and
  mis-shaped keys). Returns float32 numpy params.
  """
  from paella_jax import families
  family = families.of_model(model)
  convert = family.converter
  shapes, key_map = convert.flax_shapes(model), convert.key_map(model)
  expected = {tk: tuple(convert.TORCH_SHAPE[kind](shapes[fp])) for tk, fp, kind in key_map}
  check_state_dict(state_dict, expected,
                   f"{family.title} {family.model_class} {model.architecture()}")
  params: dict = {}
  for torch_key, flax_path, kind in key_map:
    value = convert.TO_FLAX[kind](state_dict[torch_key], shapes[flax_path])
    set_path(params, flax_path, np.array(value, np.float32).reshape(shapes[flax_path]))
  return params


def write_predictor(kind: str, model, params, source: str, out_dir: str, overwrite: bool,
                    **meta) -> str:
  """Writes a converted token predictor (`checkpoint.save_model`) with its source, its
  family's sampler defaults and `meta` in model.json; returns a one-line summary."""
  from paella_jax import families
  from paella_jax.checkpoint import save_model
  from paella_jax.models.paella import count_params
  out = save_model(out_dir, params, kind, model.architecture(),
                   meta={"source": os.path.abspath(source),
                         "sampling": dict(families.get(kind).sampler_defaults), **meta},
                   overwrite=overwrite)
  return f"converted {count_params(params):,} parameters {model.architecture()} -> {out}"
