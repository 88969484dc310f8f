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
