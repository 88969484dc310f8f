"""CLIP at run time: checkpoints written by the converter, and batched text/image encoding.

    model, params, tokenizer = load_clip("ckpts/clip_vit_g14", text_only=True)
    encoder = ClipEncoder(model, params, tokenizer)
    emb = encoder.encode_text(["a cat"])            # (1, projection_dim) float32

`random_clip` builds a CLIP with random weights (tests and the built-in demo).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax import checkpoint
from paella_jax.models.clip import CLIP, ClipConfig, init_params
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
  """

  def __init__(self, model: CLIP, params: Any, tokenizer: ClipTokenizer, batch_size: int = 64):
    self.model, self.params, self.tokenizer, self.batch_size = model, params, tokenizer, batch_size
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
    return self._encode(self._text, self.tokenizer(prompts))

  def encode_images(self, pixels: np.ndarray) -> np.ndarray:
    """Normalised pixels (N, S, S, 3) (see `preprocess_images`) -> (N, projection_dim) float32."""
    return self._encode(self._image, np.asarray(pixels, np.float32))

  def null(self, n: int) -> np.ndarray:
    """The unconditional embedding for guidance and conditioning dropout: zeros (n, proj)."""
    return np.zeros((n, self.model.config.projection_dim), np.float32)
