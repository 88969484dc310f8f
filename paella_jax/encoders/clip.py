"""CLIP at run time: checkpoints written by the converter, and batched text/image encoding.

    model, params, tokenizer = load_clip("ckpts/clip_vit_g14", text_only=True)
    encoder = ClipEncoder(model, params, tokenizer)
    emb = encoder.encode_text(["a cat"])            # (1, projection_dim) float32

`random_clip` builds a CLIP with random weights (tests and the built-in demo);
`preprocess_v3` is Paella v3's image preprocessing for CLIP-H image embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax import checkpoint
from paella_jax.models.clip import (CLIP, CLIP_MEAN, CLIP_STD, ClipConfig, as_float_images,
                                    init_params)
from paella_jax.sharding import data_parallel
from paella_jax.tokenizer import ClipTokenizer

KIND = "clip"


def random_clip(config: ClipConfig | Mapping[str, Any], seed: int = 0,
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
  """A CLIP with RANDOM weights (deterministic in `seed`), for tests and demos only.

  `config` is a ClipConfig or its dict / ConfigDict (e.g. `configs/clip_tiny.py`'s `model`).
  Returns (module, params, tokenizer) like `clip_from_pretrained`.
  """
  if not isinstance(config, ClipConfig):
    config = ClipConfig.from_dict(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  params = init_params(config, jax.random.key(seed), param_dtype)
  model = CLIP(config, dtype=dtype, param_dtype=param_dtype)
  return model, params, ClipTokenizer(max_length=config.text.context_length)


def save_clip(out_dir: str | os.PathLike, model: CLIP, params: Any, tokenizer: ClipTokenizer,
              meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes a CLIP checkpoint directory that `load_clip` (and `clip_from_pretrained`) reads."""
  config = {"model": model.config.to_dict(), "tokenizer": tokenizer.to_config()}
  return checkpoint.save_model(out_dir, params, kind=KIND, config=config, meta=meta,
                               overwrite=overwrite)


def save_random_clip(out_dir: str | os.PathLike, config, overwrite: bool = False) -> str:
  """Writes the CLIP of a config with `random_weights` (configs/clip_tiny.py): `random_clip(
  config.model, seed=config.seed)` with its tokenizer, as `load_clip` reads it."""
  if not config.get("random_weights"):
    raise ValueError("this config names released weights (convert them with paella-convert "
                     "clip); a random CLIP needs a config with random_weights=True, e.g. clip_tiny")
  model, params, tokenizer = random_clip(config.model, seed=config.seed)
  return save_clip(out_dir, model, params, tokenizer, overwrite=overwrite,
                   meta={"random_weights": True, "seed": config.seed})


def load_clip(ckpt_dir: str | os.PathLike, *, text_only: bool = False, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32):
  """Reads a directory written by `save_clip`: returns (module, params, tokenizer)."""
  _, config, params = checkpoint.load_model(ckpt_dir, expected_kind=KIND)
  model_config = ClipConfig.from_dict(config["model"])
  if text_only and model_config.vision is not None:
    model_config = dataclasses.replace(model_config, vision=None)
    params = {k: v for k, v in params.items() if k in ("text_model", "text_projection")}
  params = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)
  return (CLIP(model_config, dtype=dtype, param_dtype=param_dtype), params,
          ClipTokenizer(**config["tokenizer"]))


class ClipEncoder:
  """Batched, jit-compiled CLIP encoders, data-parallel over the local devices.

  Inputs are cut into chunks of `batch_size` (the last one padded), so each encoder compiles
  once. The null conditioning for classifier-free guidance is `null(n)`: zeros, as in Paella.
  Prompts longer than the context are cut, with one warning per `encode_text` call unless
  `warn_truncated` is False (dataset captions, cut as in training).
  """

  def __init__(self, model: CLIP, params: Any, tokenizer: ClipTokenizer, batch_size: int = 64,
               warn_truncated: bool = True):
    self.model, self.params, self.tokenizer, self.batch_size = model, params, tokenizer, batch_size
    self.warn_truncated = warn_truncated
    self._text = data_parallel(
        lambda p, ids: model.apply({"params": p}, ids, method="encode_text"), chunk_size=batch_size)
    self._image = data_parallel(
        lambda p, pixels: model.apply({"params": p}, pixels, method="encode_image"),
        chunk_size=batch_size)

  def _encode(self, fn, inputs: np.ndarray) -> np.ndarray:
    if not len(inputs):
      return np.zeros((0, self.model.config.projection_dim), np.float32)
    return fn(self.params, inputs)

  def encode_text(self, prompts: str | Sequence[str]) -> np.ndarray:
    """Prompts -> unnormalised text embeddings (N, projection_dim) float32."""
    return self._encode(self._text, self.tokenizer(prompts, warn_truncated=self.warn_truncated))

  def encode_images(self, pixels: np.ndarray) -> np.ndarray:
    """Normalised pixels (N, S, S, 3) (see `preprocess_images`) -> (N, projection_dim) float32."""
    return self._encode(self._image, np.asarray(pixels, np.float32))

  def null(self, n: int) -> np.ndarray:
    """The unconditional embedding for guidance and conditioning dropout: zeros (n, proj)."""
    return np.zeros((n, self.model.config.projection_dim), np.float32)


# ----------------------------------------------------------------------------- Paella v3 images

def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter `a` (PyTorch: -0.75, antialiased: -0.5)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((x - 5) * x + 8) * x * a - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=None)
def bicubic_matrix(out_size: int, in_size: int, antialias: bool) -> np.ndarray:
  """(out_size, in_size) float32 weights of PyTorch's bicubic resize along one axis
  (`interpolate(mode="bicubic", align_corners=False)`, half-pixel centres).

  Without antialias: four taps at a=-0.75 around scale*(i+0.5)-0.5, indices clamped to the
  edge. With antialias (PIL's filter, also when enlarging): a=-0.5 stretched by the scale when
  shrinking, taps inside the image only, weights normalised to sum to one.
  """
  scale = in_size / out_size
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    if antialias:
      support = 2.0 * max(scale, 1.0)
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), in_size)
      taps = np.arange(lo, hi)
      w = _cubic((taps - center + 0.5) / max(scale, 1.0), -0.5)
      weights[i, taps] = w / w.sum()
    else:
      src = scale * (i + 0.5) - 0.5
      base = int(np.floor(src))
      for k in range(-1, 3):
        tap = min(max(base + k, 0), in_size - 1)
        weights[i, tap] += _cubic(np.asarray(src - (base + k)), -0.75)
  return weights.astype(np.float32)


def preprocess_v3(images, size: int = 224, antialias: bool = True):
  """Paella v3's CLIP-H image preprocessing: images (B, H, W, 3), float in [0, 1] (uint8 is
  scaled) -> normalised CLIP pixels (B, size, size, 3) float32.

  The original applies torchvision's Resize(size, bicubic) and Normalize(CLIP mean/std) to
  square 256 px float tensors: the shorter side is resized to `size` (the longer to
  int(size * long / short)), without clamping. Here a non-square image is then center-cropped
  to a square (nothing to crop for the original's square inputs). `antialias` is torchvision's
  flag for tensors: True since torchvision 0.17, False (with a warning) before.
  """
  images = as_float_images(images)
  _, h, w, _ = images.shape
  short, long = min(h, w), max(h, w)
  new_long = int(size * long / short)
  new_h, new_w = (size, new_long) if h <= w else (new_long, size)
  rows = bicubic_matrix(new_h, h, antialias)[(new_h - size) // 2:][:size]
  cols = bicubic_matrix(new_w, w, antialias)[(new_w - size) // 2:][:size]
  out = jnp.einsum("oh,bhwc,pw->bopc", rows, images, cols,
                   precision=jax.lax.Precision.HIGHEST)
  return (out - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
