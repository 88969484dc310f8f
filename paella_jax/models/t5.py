"""The T5 encoder (Raffel et al. 2020) in Flax linen, as T5 v1.1, ByT5 and Paella v3 use it.

    model = T5Encoder(T5Config(...))
    hidden = model.apply({"params": p}, ids, attention_mask=mask)  # (B, L) -> (B, L, d_model) f32

Layout (Hugging Face `T5EncoderModel`): token embedding -> `num_layers` pre-norm blocks
(RMS norm, self-attention, residual; RMS norm, feed-forward, residual) -> RMS norm. No biases
anywhere; the attention has `num_heads` heads of `d_kv` (inner width num_heads * d_kv, which may
differ from d_model) and no 1/sqrt(d_kv) scaling; positions enter only as a learned per-head bias
of the bucketed relative distance (one table, shared by every block). The feed-forward is
`wo(act(wi(x)))` or, gated (T5 v1.1, ByT5), `wo(act(wi_0(x)) * wi_1(x))`.

Precision: `param_dtype` is the storage type of the parameters, `dtype` the compute type of the
matrix products. RMS norms, the attention softmax and the residual stream stay in float32.

Parameters carry logical axis names ("vocab", "embed", "kv", "heads", "mlp") that
`paella_jax.sharding` maps onto a device mesh (see `configs/byt5_xl.py`).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from paella_jax.models.activations import ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The encoder's architecture, with Hugging Face `T5Config`'s field names (defaults: byt5-small).

  feed_forward_proj: "relu" (T5 v1.0), "gated-gelu" (T5 v1.1, ByT5: tanh-approximated GELU),
  or "[gated-]ACT" with ACT in ACTIVATIONS. num_layers counts the encoder's blocks.
  """
  vocab_size: int = 384
  d_model: int = 1472
  d_kv: int = 64
  d_ff: int = 3584
  num_layers: int = 12
  num_heads: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = "gated-gelu"
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    parts = self.feed_forward_proj.split("-")
    gated_ok = len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")
    if not gated_ok or self.activation not in ACTIVATIONS:
      raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}; expected ACT or "
                       f"gated-ACT with ACT in {list(ACTIVATIONS)}")
    if self.relative_attention_num_buckets < 4:
      raise ValueError("relative_attention_num_buckets must be at least 4, got "
                       f"{self.relative_attention_num_buckets}")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    """The name in ACTIVATIONS; "gated-gelu" means the tanh approximation, as in Hugging Face."""
    name = self.feed_forward_proj.split("-")[-1]
    return "gelu_new" if self.feed_forward_proj == "gated-gelu" else name

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Any) -> "T5Config":
    """From a dict with these fields; other keys (e.g. the rest of a config.json) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(d).items() if k in names})


@lru_cache(maxsize=None)
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """(length, length) int32 bucket of key position minus query position, bidirectional.

  Half the buckets take positive distances, half the others; within each half, distances below
  a quarter of num_buckets get a bucket each and the rest share logarithmically wider buckets
  up to `max_distance` (anything farther goes to the last). Computed in float32 like the
  reference implementations, so that the rounding at bucket edges agrees with them.
  """
  position = np.arange(length)
  relative = position[None, :] - position[:, None]
  half = num_buckets // 2
  exact = half // 2
  distance = np.abs(relative)
  log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
  large = exact + (log_ratio / np.float32(math.log(max_distance / exact))
                   * np.float32(half - exact)).astype(np.int64)
  buckets = (relative > 0) * half + np.where(distance < exact, distance,
                                             np.minimum(large, half - 1))
  return buckets.astype(np.int32)


def _dense(features: int, axes: tuple[str, str], name: str, dtype: Any, param_dtype: Any):
  init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(init, axes))


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, in float32 (no mean subtraction, no bias)."""
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
    scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return x * scale.astype(jnp.float32)


class Attention(nn.Module):
  """Self-attention with an additive bias, (B, L, D) -> (B, L, D); softmax in float32.

  bias: (1 or B, H, L, L) float32 added to the logits (relative positions and the key mask).
  """
  num_heads: int
  d_kv: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    b, length, d_model = x.shape
    inner = self.num_heads * self.d_kv
    split = lambda y: y.reshape(b, length, self.num_heads, self.d_kv)
    q, k, v = (split(_dense(inner, ("embed", "kv"), n, self.dtype, self.param_dtype)(x))
               for n in "qkv")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, inner)
    return _dense(d_model, ("kv", "embed"), "o", self.dtype, self.param_dtype)(out)


class FeedForward(nn.Module):
  """wo(act(wi(x))), or gated wo(act(wi_0(x)) * wi_1(x)); (B, L, D) -> (B, L, D)."""
  d_ff: int
  activation: str
  gated: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, axes, name: _dense(n, axes, name, self.dtype, self.param_dtype)
    act = ACTIVATIONS[self.activation]
    if self.gated:
      h = act(dense(self.d_ff, ("embed", "mlp"), "wi_0")(x))
      h = h * dense(self.d_ff, ("embed", "mlp"), "wi_1")(x)
    else:
      h = act(dense(self.d_ff, ("embed", "mlp"), "wi")(x))
    return dense(x.shape[-1], ("mlp", "embed"), "wo")(h.astype(self.dtype))


class Block(nn.Module):
  """One pre-norm encoder block, (B, L, D) float32 -> (B, L, D) float32."""
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    c = self.config
    h = RMSNorm(c.layer_norm_epsilon, self.param_dtype, name="attention_norm")(x)
    x = x + Attention(c.num_heads, c.d_kv, self.dtype, self.param_dtype, name="attention")(
        h.astype(self.dtype), bias).astype(jnp.float32)
    h = RMSNorm(c.layer_norm_epsilon, self.param_dtype, name="mlp_norm")(x)
    return x + FeedForward(c.d_ff, c.activation, c.gated, self.dtype, self.param_dtype,
                           name="mlp")(h.astype(self.dtype)).astype(jnp.float32)


class T5Encoder(nn.Module):
  """Token ids (B, L) int -> last hidden states (B, L, d_model) float32 (after the final norm).

  attention_mask: None (every position attends to every position, as Paella v3 calls ByT5) or
  (B, L) with 1/True for real tokens and 0/False for padding: no position attends to padding,
  so the states of a prompt's tokens do not depend on how much padding follows them.
  """
  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, attention_mask=None):
    c = self.config
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"token ids must be a (batch, length) integer array, got {ids.dtype} "
                       f"{ids.shape}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(ids.shape):
      raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match the ids "
                       f"{tuple(ids.shape)}")
    length = ids.shape[1]
    embed = nn.Embed(c.vocab_size, c.d_model, dtype=jnp.float32, param_dtype=self.param_dtype,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                 ("vocab", "embed")),
                     name="token_embedding")
    x = embed(ids)
    table = self.param("relative_attention_bias",
                       nn.with_logical_partitioning(nn.initializers.normal(0.1), (None, "heads")),
                       (c.relative_attention_num_buckets, c.num_heads), self.param_dtype)
    buckets = relative_position_buckets(length, c.relative_attention_num_buckets,
                                        c.relative_attention_max_distance)
    bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]  # (1, H, L, L)
    if attention_mask is not None:
      keep = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
      bias = jnp.where(keep, bias, jnp.finfo(jnp.float32).min)
    for i in range(c.num_layers):
      x = Block(c, self.dtype, self.param_dtype, name=f"block_{i}")(x, bias)
    return RMSNorm(c.layer_norm_epsilon, self.param_dtype, name="final_norm")(x)


def example_inputs() -> tuple:
  """The arguments of one call: a (1, 8) zero token batch."""
  return (jnp.zeros((1, 8), jnp.int32),)


def init_params(model: T5Encoder, rng: jax.Array, unbox: bool = True) -> dict:
  """Fresh parameters (traced on a (1, 8) zero batch). With unbox=False they keep their logical
  axis names (for `nn.get_partition_spec`)."""
  params = model.init(rng, *example_inputs())["params"]
  return nn.meta.unbox(params) if unbox else params
