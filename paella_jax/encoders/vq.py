"""VQGANs at run time: checkpoints written by the converter or trainer, and batched,
jit-compiled encoding (images -> codes) and decoding (codes -> images).

    module, params = load_vqgan("ckpts/vqgan_sber_f8")
    codec = VQGANCodec(module, params)
    codes = codec.encode(images)       # (N, H, W, 3) in [0, 1] -> (N, H/f, W/f) int32
    images = codec.decode(codes)       # -> (N, H, W, 3) in [0, 1]
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax import checkpoint
from paella_jax.models.vqgan import check_codes, check_images, vqgan_config, vqgan_from_config
from paella_jax.sharding import data_parallel

KIND = "vqgan"


def save_vqgan(out_dir: str | os.PathLike, module, params: Any,
               meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes a VQGAN checkpoint directory that `load_vqgan` reads."""
  return checkpoint.save_model(out_dir, params, kind=KIND, config=vqgan_config(module), meta=meta,
                               overwrite=overwrite)


def load_vqgan(ckpt_dir: str | os.PathLike, dtype: Any = jnp.float32) -> tuple[Any, dict]:
  """Reads a directory written by `save_vqgan` or the converter CLI: returns (module, params)."""
  _, config, params = checkpoint.load_model(ckpt_dir, expected_kind=KIND)
  return vqgan_from_config(config, dtype=dtype), jax.tree.map(jnp.asarray, params)


class VQGANCodec:
  """Batched, jit-compiled `encode`/`decode`, data-parallel over the local devices.

  Inputs are cut into chunks of `batch_size` (the last one padded), so each image size compiles
  once. `dtype=jnp.bfloat16` computes in bfloat16 with float32 parameters (see docs/vqgan.md
  for its error against float32).
  """

  def __init__(self, module, params: Any, batch_size: int = 16, dtype: Any = None):
    self.module = module if dtype is None else module.clone(dtype=dtype)
    self.params, self.batch_size = params, batch_size
    self._encode = data_parallel(
        lambda p, x: self.module.apply({"params": p}, x, method="encode"), chunk_size=batch_size)
    self._decode = data_parallel(
        lambda p, c: self.module.apply({"params": p}, c, method="decode_codes"),
        chunk_size=batch_size)

  def encode(self, images) -> np.ndarray:
    """Images (N,H,W,3) in [0,1], H and W multiples of `module.factor` -> codes (N,h,w) int32."""
    images = np.asarray(images, np.float32)
    check_images(images, self.module.factor, self.module.in_channels)
    return self._encode(self.params, images)

  def decode(self, codes) -> np.ndarray:
    """Codes (N,h,w) int in [0, n_embed) -> images (N,h*f,w*f,3) in [0,1] float32."""
    codes = np.asarray(codes)
    check_codes(codes, self.module.n_embed)
    return self._decode(self.params, codes.astype(np.int32))
