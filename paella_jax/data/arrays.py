"""Pre-tokenized datasets held in memory: (tokens, clip) arrays and a resumable batch iterator.

File formats accepted by `load_token_arrays`:
  - an .npz with arrays "tokens" int (N, h, w) and "clip" float (N, c_clip);
  - a directory with tokens.npy and clip.npy of the same shapes.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np


def check_token_arrays(tokens: np.ndarray, clip: np.ndarray, num_labels: int, c_clip: int,
                       source: str = "data") -> None:
  """Raises ValueError naming the problem: ranks, dtypes, sizes, token range."""
  if tokens.ndim != 3 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{source}: tokens must be integer (N, h, w), got {tokens.dtype} {tokens.shape}")
  if clip.ndim != 2 or clip.shape[1] != c_clip or not np.issubdtype(clip.dtype, np.floating):
    raise ValueError(f"{source}: clip must be float (N, {c_clip}), got {clip.dtype} {clip.shape}")
  if len(tokens) != len(clip):
    raise ValueError(f"{source}: {len(tokens)} token maps but {len(clip)} embeddings")
  if len(tokens) == 0:
    raise ValueError(f"{source}: no examples")
  if tokens.min() < 0 or tokens.max() >= num_labels:
    raise ValueError(f"{source}: token ids must lie in [0, {num_labels}), got "
                     f"[{tokens.min()}, {tokens.max()}]")


def load_token_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (tokens (N, h, w) int32, clip (N, C) float32) from an .npz file or a directory."""
  if os.path.isdir(path):
    files = [os.path.join(path, name) for name in ("tokens.npy", "clip.npy")]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"{path} lacks {', '.join(missing)}")
    tokens, clip = (np.load(f, allow_pickle=False) for f in files)
  elif os.path.isfile(path):
    with np.load(path, allow_pickle=False) as data:
      missing = {"tokens", "clip"} - set(data.files)
      if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)} (has {data.files})")
      tokens, clip = data["tokens"], data["clip"]
  else:
    raise FileNotFoundError(f"dataset not found: {path}")
  return tokens.astype(np.int32), clip.astype(np.float32)


def random_token_arrays(num_examples: int, latent_shape: tuple[int, int], num_labels: int,
                        c_clip: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Uniform random tokens and Gaussian embeddings, for smoke tests and benchmarks."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, num_labels, (num_examples, *latent_shape), dtype=np.int32)
  return tokens, rng.standard_normal((num_examples, c_clip), dtype=np.float32)


class ArrayBatcher:
  """Endless, seeded, epoch-shuffled batches of {"tokens", "clip"} (and the `extra` arrays, one
  row per example, under their names), resumable exactly.

  `state()` is a small JSON-able dict; `ArrayBatcher(..., state=s)` continues with exactly the
  batch that would have come next. `rows` selects this process's rows of each global batch of
  `batch_size` (see `sharding.process_rows`); only those examples are read.
  """

  def __init__(self, tokens: np.ndarray, clip: np.ndarray, batch_size: int, seed: int = 0,
               state: dict | None = None, rows: slice | None = None,
               extra: dict[str, np.ndarray] | None = None):
    self.tokens, self.clip, self.extra = tokens, clip, dict(extra or {})
    self.batch_size, self.seed = batch_size, seed
    self.rows = rows or slice(0, batch_size)
    self.epoch, self.position = (state["epoch"], state["position"]) if state else (0, 0)
    self._order = self._permutation(self.epoch)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.tokens))

  def state(self) -> dict:
    return {"epoch": int(self.epoch), "position": int(self.position)}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    index = []
    while len(index) < self.batch_size:
      take = min(self.batch_size - len(index), len(self._order) - self.position)
      index.extend(self._order[self.position:self.position + take])
      self.position += take
      if self.position == len(self._order):
        self.epoch, self.position = self.epoch + 1, 0
        self._order = self._permutation(self.epoch)
    index = np.asarray(index)[self.rows]
    return {"tokens": self.tokens[index], "clip": self.clip[index],
            **{name: values[index] for name, values in self.extra.items()}}


V3_ARRAYS = {  # per ByT5 input (config.data.byt5); clip_image is optional
    "states": ("tokens", "byt5", "byt5_mask", "clip", "clip_image", "byt5_empty", "clip_empty"),
    "ids": ("tokens", "byt5_ids", "byt5_mask", "clip", "clip_image", "clip_empty")}


def v3_arrays(path: str | None, num_examples: int, latent_shape: tuple[int, int], model,
              length: int, seed: int = 0, byt5: str = "states") -> dict[str, np.ndarray]:
  """Paella v3 training arrays (V3_ARRAYS[byt5]): from an .npz (tokens (N, h, w), with
  byt5 = "states" byt5 (N, L, byt5_embd) and the empty caption's byt5_empty (L0, byt5_embd),
  with "ids" ByT5 byte ids byt5_ids (N, L) int; byt5_mask (N, L), clip and optionally
  clip_image (N, clip_embd), the empty caption's clip_empty (clip_embd,)), or random ones of L
  = `length` positions (1 to L real tokens each) when `path` is None. The empty caption's
  arrays are broadcast to one row per example."""
  names = V3_ARRAYS[byt5]
  if path is None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, num_examples)
    mask = np.arange(length)[None] < lengths[:, None]
    arrays = dict(
        tokens=rng.integers(0, model.num_labels, (num_examples, *latent_shape), dtype=np.int32),
        byt5_mask=mask,
        clip=rng.standard_normal((num_examples, model.clip_embd), dtype=np.float32),
        clip_image=rng.standard_normal((num_examples, model.clip_embd), dtype=np.float32),
        clip_empty=rng.standard_normal((model.clip_embd,), dtype=np.float32))
    if byt5 == "ids":  # random bytes, then </s> (id 1), then padding (0)
      ids = np.where(mask, rng.integers(3, 259, mask.shape), 0).astype(np.int32)
      ids[np.arange(num_examples), lengths - 1] = 1
      arrays["byt5_ids"] = ids
    else:
      arrays.update(
          byt5=rng.standard_normal((num_examples, length, model.byt5_embd), dtype=np.float32),
          byt5_empty=rng.standard_normal((1, model.byt5_embd), dtype=np.float32))
  else:
    with np.load(path, allow_pickle=False) as data:
      missing = set(names) - {"clip_image"} - set(data.files)
      if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)} (has {data.files}) for ByT5 "
                         f"{byt5} (config.data.byt5)")
      arrays = {k: data[k] for k in names if k in data.files}
  n = len(arrays["tokens"])
  for name in ("byt5_empty", "clip_empty"):
    if name in arrays:
      arrays[name] = np.broadcast_to(arrays[name], (n, *arrays[name].shape))
  return arrays
