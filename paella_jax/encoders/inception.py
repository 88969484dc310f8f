"""The FID Inception v3 at run time: the checkpoint written by its converter."""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from paella_jax import checkpoint
from paella_jax.models.inception import InceptionV3

KIND = "inception_fid"


def save_inception(out_dir: str | os.PathLike, module: InceptionV3, params: Any,
                   meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
  """Writes a checkpoint directory that `load_inception` reads."""
  return checkpoint.save_model(out_dir, params, kind=KIND, config={"resize_to": module.resize_to},
                               meta=meta, overwrite=overwrite)


def load_inception(ckpt_dir: str | os.PathLike) -> tuple[InceptionV3, dict]:
  """Reads a directory written by `save_inception` or the converter CLI: (module, params)."""
  _, config, params = checkpoint.load_model(ckpt_dir, expected_kind=KIND)
  return InceptionV3(**config), jax.tree.map(jnp.asarray, params)
