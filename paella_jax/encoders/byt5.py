"""The ByT5 (T5) text encoder at run time: checkpoints written by the converter, and prompts ->
(hidden states, mask) for Paella v3's conditioning.

    model, params, tokenizer = load_t5_encoder("checkpoints/byt5_xl", param_dtype=jnp.bfloat16)
    encoder = ByT5Encoder(model, params, tokenizer)
    hidden, mask = encoder.encode(["a cat", "a dog on a skateboard"])
    # hidden (2, L, d_model) float32; mask (2, L) bool, True at real tokens; L a multiple of 64

Padding: prompts of a batch are padded with zeros to a common length. With `masked=True`
(the default) no token attends to the padding, so each prompt's states at its own tokens are
those it gets alone, whatever the batch; `mask` tells the predictor which positions are real.
Paella v3's original code calls ByT5 without a mask (`masked=False` reproduces it): there a
prompt's states depend on how much padding its batch adds.

Parameters are sharded over a mesh by logical axis rules (`configs/byt5_xl.py`), so that the
2.6B-parameter ByT5-XL encoder can be split over several chips; `compile_forward` compiles the
same sharded forward ahead of time for a TPU topology to measure its memory.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from paella_jax import checkpoint
from paella_jax.byt5_tokenizer import PAD_ID, ByT5Tokenizer
from paella_jax.models.t5 import T5Config, T5Encoder, init_params
from paella_jax.sharding import batch_sharding, logical_shardings, make_mesh

KIND = "t5_encoder"
# Logical parameter axes -> mesh axes: FSDP over "fsdp", heads and MLP over "tensor".
DEFAULT_RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv", "tensor"),
                 ("heads", "tensor"), ("mlp", "tensor"), ("vocab", None))


def _as_config(config: T5Config | Mapping[str, Any]) -> T5Config:
  if isinstance(config, T5Config):
    return config
  return T5Config.from_dict(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def random_t5_encoder(config: T5Config | Mapping[str, Any], seed: int = 0,
                      dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                      max_length: int = 768):
  """A T5 encoder with RANDOM weights (deterministic in `seed`), for tests and demos only.

  Returns (module, params, ByT5Tokenizer) like `t5_encoder_from_pretrained`.
  """
  model = T5Encoder(_as_config(config), dtype=dtype, param_dtype=param_dtype)
  params = jax.jit(lambda rng: init_params(model, rng))(jax.random.key(seed))
  return model, params, ByT5Tokenizer(max_length)


def save_t5_encoder(out_dir: str | os.PathLike, model: T5Encoder, params: Any,
                    tokenizer: ByT5Tokenizer | None, meta: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> str:
  """Writes a T5 encoder checkpoint directory that `load_t5_encoder` reads."""
  config = {"model": model.config.to_dict(),
            "tokenizer": None if tokenizer is None else tokenizer.to_config()}
  return checkpoint.save_model(out_dir, params, kind=KIND, config=config, meta=meta,
                               overwrite=overwrite)


def load_t5_encoder(ckpt_dir: str | os.PathLike, *, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32):
  """Reads a directory written by `save_t5_encoder`: returns (module, params, tokenizer or None)."""
  _, config, params = checkpoint.load_model(ckpt_dir, expected_kind=KIND)
  params = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)
  tokenizer = None if config["tokenizer"] is None else ByT5Tokenizer(**config["tokenizer"])
  return T5Encoder(T5Config.from_dict(config["model"]), dtype=dtype,
                   param_dtype=param_dtype), params, tokenizer


# ----------------------------------------------------------------------------- sharded forward

def default_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh with every device on "fsdp" (parameters and batch split)."""
  devices = jax.local_devices() if devices is None else devices
  return make_mesh(ml_collections.ConfigDict({"shape": (1, -1, 1)}), devices)


def param_shardings(model: T5Encoder, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
  """NamedShardings of the model's parameters under the logical axis `rules`."""
  boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0), unbox=False))
  return logical_shardings(boxed, mesh, rules)


def sharded_forward(model: T5Encoder, mesh: Mesh, rules: Any = DEFAULT_RULES):
  """jit of (params, ids (B, L), mask (B, L) bool or None) -> hidden states (B, L, D) float32,
  parameters sharded by `rules`, the batch over the mesh axes of the logical axis "batch"."""
  batch = batch_sharding(mesh, rules)
  return jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, attention_mask=mask),
                 in_shardings=(param_shardings(model, mesh, rules), batch, batch),
                 out_shardings=batch)


def compile_forward(model: T5Encoder, mesh: Mesh, batch: int, length: int,
                    rules: Any = DEFAULT_RULES, masked: bool = True):
  """The sharded forward compiled ahead of time for `mesh` (e.g. over a TPU topology's abstract
  devices) at (batch, length) tokens; `.memory_analysis()` gives its per-device bytes."""
  shardings = param_shardings(model, mesh, rules)
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
  data = batch_sharding(mesh, rules)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=data)
  mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=data) if masked else None
  return sharded_forward(model, mesh, rules).lower(params, ids, mask).compile()


class ByT5Encoder:
  """Prompts -> (hidden states, mask), jit-compiled and sharded over a mesh.

  Prompts are tokenized together and padded to a multiple of `pad_multiple` tokens, then encoded
  in chunks of `batch_size` rows (the last one padded), so a length bucket compiles once.

  Args:
    masked: pass the padding mask to the encoder (see the module docstring).
    warn_truncated: log one warning per `encode` call that cuts prompts to the tokenizer's
      max_length (False for dataset captions, cut as in training).
    mesh, rules: where the parameters and the batch live (default: every local device on
      "fsdp", DEFAULT_RULES); batch_size must divide evenly over the batch's mesh axes.
  """

  def __init__(self, model: T5Encoder, params: Any, tokenizer: ByT5Tokenizer,
               batch_size: int = 64, pad_multiple: int = 64, masked: bool = True,
               mesh: Mesh | None = None, rules: Any = DEFAULT_RULES, warn_truncated: bool = True):
    self.model, self.tokenizer, self.masked = model, tokenizer, masked
    self.warn_truncated = warn_truncated
    self.batch_size, self.pad_multiple = batch_size, pad_multiple
    self.mesh = default_mesh() if mesh is None else mesh
    spec = batch_sharding(self.mesh, rules).spec[0]
    shards = math.prod(self.mesh.shape[a] for a in (spec if isinstance(spec, tuple) else
                                                    (spec,) if spec else ()))
    if batch_size % shards:
      raise ValueError(f"batch_size {batch_size} does not split over the {shards} batch shards "
                       f"of the mesh {dict(self.mesh.shape)}")
    self.params = jax.device_put(params, param_shardings(model, self.mesh, rules))
    self._forward = sharded_forward(model, self.mesh, rules)

  def encode(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (hidden (N, L, d_model) float32, mask (N, L) bool) as numpy arrays."""
    ids = self.tokenizer(prompts, pad_to_multiple_of=self.pad_multiple,
                         warn_truncated=self.warn_truncated)
    if not len(ids):
      raise ValueError("no prompts: give at least one (the empty string is a prompt)")
    mask = ids != PAD_ID
    outputs = []
    for start in range(0, len(ids), self.batch_size):
      chunk_ids = ids[start:start + self.batch_size]
      chunk_mask = mask[start:start + self.batch_size]
      rows, pad = len(chunk_ids), self.batch_size - len(chunk_ids)
      chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[-1:], pad, axis=0)])
      chunk_mask = np.concatenate([chunk_mask, np.repeat(chunk_mask[-1:], pad, axis=0)])
      out = self._forward(self.params, chunk_ids, chunk_mask if self.masked else None)
      outputs.append(np.asarray(out[:rows]))
    return np.concatenate(outputs), mask

  def null(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unconditional input of guidance and caption dropout: the encoding of "" (n rows)."""
    hidden, mask = self.encode([""])
    return np.repeat(hidden, n, axis=0), np.repeat(mask, n, axis=0)
