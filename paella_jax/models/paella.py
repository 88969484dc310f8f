"""Paella v1 token predictor (`DenoiseUNet`) as a Flax linen module, NHWC.

A fully convolutional U-Net over VQGAN tokens: embedding -> down levels (strided conv, ResBlocks)
-> up levels (ResBlocks with skip concatenation, transposed conv) -> 1x1 classifier over the
codebook. Every ResBlock is conditioned on concat(CLIP embedding, timestep embedding) through a
modulated LayerNorm. Architecture facts: Rampas et al. 2022 (arXiv 2211.07292), released v1 model.

Parameters carry logical axis names ("vocab", "embed", "mlp", "cond", "conv_in") and the
activations at block boundaries carry ("batch", None, None, "act_embed" | "act_mlp" |
"act_vocab"); `paella_jax.sharding` maps both onto a device mesh. The activation constraints are
no-ops unless logical axis rules and a mesh are in context (the sharded trainer sets them), so
the same module runs unchanged on one device. `remat` recomputes each ResBlock's activations
in the backward pass ("block") or all but its matmul outputs ("dots") to save memory.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from paella_jax.noise import timestep_embedding

Dtype = Any
LN_EPS = 1e-6
LAYER_SCALE_INIT = 1e-6


# Logical axes of the activations: NHWC maps with channels, MLP hidden units or logits last.
ACT_EMBED = ("batch", None, None, "act_embed")
ACT_MLP = ("batch", None, None, "act_mlp")
ACT_VOCAB = ("batch", None, None, "act_vocab")

# Activations a ResBlock keeps for the backward pass ("none": all; "block": only its inputs;
# "dots": its inputs and matmul outputs).
REMAT_POLICIES = {"block": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _init(initializer, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(initializer, axes)


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Pins x to the mesh axes that the rules in context give its logical axes (else a no-op)."""
  return nn.with_logical_constraint(x, names)


def _dense(features: int, in_axis: str, out_axis: str, name: str, dtype: Dtype,
           param_dtype: Dtype, kernel_scale: float = 1.0) -> nn.Dense:
  kernel_init = nn.initializers.variance_scaling(kernel_scale, "fan_in", "truncated_normal")
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=_init(kernel_init, (in_axis, out_axis)),
                  bias_init=_init(nn.initializers.zeros_init(), (out_axis,)))


@lru_cache(maxsize=None)
def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """(out_size, in_size) float32 weights of PyTorch's bilinear resize, align_corners=False.

  Half-pixel centres, source index clamped at 0, no antialiasing (also when shrinking): the
  exact semantics of `torch.nn.functional.interpolate(mode="bilinear")`, computed in float32.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5))
                   - np.float32(0.5), np.float32(0))
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float32)
  weights = np.zeros((out_size, in_size), np.float32)
  np.add.at(weights, (np.arange(out_size), lo), np.float32(1) - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes (B, H, W, C) to (B, size[0], size[1], C) like PyTorch's bilinear interpolate."""
  _, h, w, _ = x.shape
  if (h, w) == tuple(size):
    return x
  rows = jnp.asarray(_bilinear_matrix(size[0], h))
  cols = jnp.asarray(_bilinear_matrix(size[1], w))
  x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", cols, x, precision=jax.lax.Precision.HIGHEST)


def condition_at(s: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The conditioning map for a level of spatial `size`.

  s: (B, 1, 1, C) pooled conditioning (broadcast over space) or a (B, h', w', C) map, resized
  bilinearly when its size differs from the level's.
  """
  if s.shape[1:3] == (1, 1):
    return s
  return resize_bilinear(s, size)


class Embedding(nn.Module):
  """Token embedding, int (B, h, w) -> (B, h, w, features), with nn.Embed's parameter.

  The table is gathered whole before the lookup (it is small), so that with a sharded table the
  lookup and its gradient (a scatter-add) stay within each device's batch shard.
  """
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    table = self.param("embedding", _init(nn.initializers.normal(1.0), ("vocab", "embed")),
                       (self.num_embeddings, self.features), self.param_dtype)
    table = _constrain(table.astype(self.dtype), (None, None))
    return _constrain(jnp.take(table, tokens, axis=0), ACT_EMBED)


class ModulatedLayerNorm(nn.Module):
  """gamma * s * LN(x) + beta * s with an affine LN (eps 1e-6) and scalar gamma, beta.

  x: (B, H, W, C); s: (B, H, W, C) or (B, 1, 1, C), broadcast over space.
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, s):
    ln = nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="ln",
                      scale_init=_init(nn.initializers.ones_init(), ("embed",)),
                      bias_init=_init(nn.initializers.zeros_init(), ("embed",)))
    # The original initialises both scalars from a standard normal.
    gamma = self.param("gamma", _init(nn.initializers.normal(1.0), ()), (), self.param_dtype)
    beta = self.param("beta", _init(nn.initializers.normal(1.0), ()), (), self.param_dtype)
    gamma, beta = gamma.astype(self.dtype), beta.astype(self.dtype)
    return gamma * s * ln(x) + beta * s


class DepthwiseConv3x3(nn.Module):
  """Reflect-padded 3x3 depthwise conv with bias: (B, H, W, C) -> (B, H, W, C).

  Written as nine shifted multiply-adds, which XLA fuses into one elementwise pass; XLA:CPU's
  grouped convolution (feature_group_count=C) is ~10x slower for this shape. Parameters as a
  depthwise nn.Conv: kernel (3, 3, 1, C), bias (C,).
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, (h, w) = x.shape[-1], x.shape[1:3]
    kernel = self.param("kernel", _init(nn.initializers.lecun_normal(),
                                        (None, None, None, "embed")), (3, 3, 1, c),
                        self.param_dtype)
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("embed",)), (c,),
                      self.param_dtype)
    padded = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    taps = kernel.astype(self.dtype)[:, :, 0]
    out = sum(padded[:, i:i + h, j:j + w] * taps[i, j] for i in range(3) for j in range(3))
    return out + bias.astype(self.dtype)


class ResBlock(nn.Module):
  """x + layer_scale * MLP(concat(MLN(DWConv(x), cond_mapper(s)), skip)).

  x: (B, H, W, C); s: (B, H, W, c_cond) or (B, 1, 1, c_cond); skip: (B, H, W, c_skip) or None.
  `mlp_out_scale` scales the variance of the last MLP layer's initial kernel (1 / sum(levels)).
  """
  mlp_out_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, s, skip=None):
    c = x.shape[-1]
    h = DepthwiseConv3x3(self.dtype, self.param_dtype, name="depthwise")(x)
    s = _dense(c, "cond", "embed", "cond_mapper", self.dtype, self.param_dtype)(s)
    h = ModulatedLayerNorm(self.dtype, self.param_dtype, name="norm")(h, s)
    if skip is not None:
      h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
    h = _dense(4 * c, "embed", "mlp", "mlp_in", self.dtype, self.param_dtype)(h)
    h = _constrain(nn.gelu(h, approximate=False), ACT_MLP)
    h = _dense(c, "mlp", "embed", "mlp_out", self.dtype, self.param_dtype,
               kernel_scale=self.mlp_out_scale)(h)
    layer_scale = self.param("layer_scale",
                             _init(nn.initializers.constant(LAYER_SCALE_INIT), ("embed",)),
                             (c,), self.param_dtype)
    return _constrain(x + layer_scale.astype(self.dtype) * h, ACT_EMBED)


class TransposedConv2x(nn.Module):
  """PyTorch `ConvTranspose2d(k=4, stride=2, padding=1)`: (B, H, W, C) -> (B, 2H, 2W, features).

  Computed as a stride-1 convolution of the input dilated by 2 and padded by k - 1 - p = 2, with
  the kernel stored in that convolution's layout (kh, kw, in, out): the converter flips PyTorch's
  (in, out, kh, kw) kernel spatially.
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    kernel = self.param("kernel", _init(nn.initializers.lecun_normal(),
                                        (None, None, "conv_in", "embed")),
                        (4, 4, c_in, self.features), self.param_dtype)
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("embed",)),
                      (self.features,), self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1, 1),
        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def _check_inputs(tokens, clip, r, num_labels: int, c_clip: int, levels: int) -> None:
  """Static checks on ranks, dtypes and shapes (and on values when they are concrete)."""
  if tokens.ndim != 3 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be an integer array (B, h, w), got {tokens.dtype} "
                     f"{tuple(tokens.shape)}")
  if clip.ndim not in (2, 4) or clip.shape[-1] != c_clip:
    raise ValueError(f"clip must be (B, {c_clip}) or (B, h', w', {c_clip}), got {tuple(clip.shape)}")
  if r.ndim != 1:
    raise ValueError(f"r must be (B,), got {tuple(r.shape)}")
  batch = tokens.shape[0]
  if clip.shape[0] != batch or r.shape[0] != batch:
    raise ValueError(f"batch sizes differ: tokens {batch}, clip {clip.shape[0]}, r {r.shape[0]}")
  factor = 2 ** (levels - 1)
  if tokens.shape[1] % factor or tokens.shape[2] % factor or min(tokens.shape[1:]) < 2 * factor:
    raise ValueError(f"latent size {tuple(tokens.shape[1:])} must be divisible by {factor} and "
                     f"at least {2 * factor} for a model with {levels} levels (the deepest "
                     "level needs 2x2 for its reflection padding)")
  if not isinstance(tokens, jax.core.Tracer):
    values = np.asarray(tokens)
    if values.size and (values.min() < 0 or values.max() >= num_labels):
      raise ValueError(f"token ids must lie in [0, {num_labels}), got [{values.min()}, "
                       f"{values.max()}]")


class DenoiseUNet(nn.Module):
  """Paella v1 token predictor.

  Call: (tokens int (B, h, w) in [0, num_labels), clip (B, c_clip) pooled or (B, h', w', c_clip)
  spatial, r (B,) in [0, 1]) -> logits (B, h, w, num_labels) float32. h and w must be divisible
  by 2 ** (levels - 1); any such size works (the model is fully convolutional).
  `remat`: "none", "block" or "dots" (see REMAT_POLICIES); it changes memory and FLOPs only.
  """
  num_labels: int = 8192
  c_hidden: int = 1280
  c_clip: int = 1024
  c_r: int = 64
  down_levels: Sequence[int] = (4, 8, 16)
  up_levels: Sequence[int] = (16, 8, 4)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"

  ARCHITECTURE_FIELDS = ("num_labels", "c_hidden", "c_clip", "c_r", "down_levels", "up_levels")

  def architecture(self) -> dict[str, Any]:
    """The fields that define the parameter shapes, as plain JSON-able values."""
    return {f: (list(v) if isinstance(v, (tuple, list)) else v)
            for f in self.ARCHITECTURE_FIELDS for v in [getattr(self, f)]}

  @property
  def c_levels(self) -> list[int]:
    return [self.c_hidden // 2 ** i for i in reversed(range(len(self.down_levels)))]

  def conditioning(self, clip: jax.Array, r: jax.Array) -> jax.Array:
    """concat(clip, r_emb): (B, 1, 1, c_clip + c_r) for pooled clip, else (B, h', w', ...)."""
    r_emb = timestep_embedding(r, self.c_r)
    if clip.ndim == 2:
      clip = clip[:, None, None, :]
    r_emb = jnp.broadcast_to(r_emb[:, None, None, :], clip.shape[:3] + (self.c_r,))
    return jnp.concatenate([clip.astype(jnp.float32), r_emb], axis=-1)

  @nn.compact
  def __call__(self, tokens, clip, r):
    levels = len(self.down_levels)
    if len(self.up_levels) != levels:
      raise ValueError(f"down_levels {self.down_levels} and up_levels {self.up_levels} "
                       "must have the same length")
    _check_inputs(tokens, clip, r, self.num_labels, self.c_clip, levels)
    if self.remat != "none" and self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}, "
                       f"got {self.remat!r}")
    block = (ResBlock if self.remat == "none"
             else nn.remat(ResBlock, policy=REMAT_POLICIES[self.remat]))
    c_levels = self.c_levels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    s = self.conditioning(clip, r)

    x = Embedding(self.num_labels, c_levels[0], name="embedding", **kw)(tokens)
    down_scale = 1.0 / sum(self.down_levels)
    level_outputs = []
    for i, num_blocks in enumerate(self.down_levels):
      if i > 0:
        x = nn.Conv(c_levels[i], (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                    name=f"down_{i}_downsample", **kw,
                    kernel_init=_init(nn.initializers.lecun_normal(),
                                      (None, None, "conv_in", "embed")),
                    bias_init=_init(nn.initializers.zeros_init(), ("embed",)))(x)
        x = _constrain(x, ACT_EMBED)
      s_level = condition_at(s, x.shape[1:3]).astype(self.dtype)
      for j in range(num_blocks):
        x = block(down_scale, name=f"down_{i}_block_{j}", **kw)(x, s_level)
      level_outputs.insert(0, x)

    up_scale = 1.0 / sum(self.up_levels)
    x = level_outputs[0]
    for i, num_blocks in enumerate(self.up_levels):
      s_level = condition_at(s, x.shape[1:3]).astype(self.dtype)
      for j in range(num_blocks):
        skip = level_outputs[i] if (i > 0 and j == 0) else None
        x = block(up_scale, name=f"up_{i}_block_{j}", **kw)(x, s_level, skip)
      if i < levels - 1:
        x = TransposedConv2x(c_levels[levels - 2 - i], name=f"up_{i}_upsample", **kw)(x)
        x = _constrain(x, ACT_EMBED)

    logits = nn.Conv(self.num_labels, (1, 1), name="clf", **kw,
                     kernel_init=_init(nn.initializers.lecun_normal(),
                                       (None, None, "embed", "vocab")),
                     bias_init=_init(nn.initializers.zeros_init(), ("vocab",)))(x)
    return _constrain(logits.astype(jnp.float32), ACT_VOCAB)


def example_inputs(model: DenoiseUNet, latent_shape: Sequence[int]) -> tuple:
  """The arguments of one call on a (1, h, w) zero token map with pooled conditioning."""
  return jnp.zeros((1, *latent_shape), jnp.int32), jnp.zeros((1, model.c_clip)), jnp.zeros((1,))


def init_params(model: DenoiseUNet, rng: jax.Array, latent_shape: Sequence[int],
                unbox: bool = True) -> dict:
  """Fresh parameters, initialised on `example_inputs`. With unbox=False they keep their
  logical axis names (for `nn.get_partition_spec`)."""
  params = model.init(rng, *example_inputs(model, latent_shape))["params"]
  return nn.meta.unbox(params) if unbox else params


def count_params(params) -> int:
  """Total number of parameters of a (possibly boxed) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(params)))


def build_model(config: Any) -> DenoiseUNet:
  """A DenoiseUNet from a config mapping (dtype names such as "bfloat16" allowed)."""
  fields = dict(config)
  for key in ("dtype", "param_dtype"):
    if isinstance(fields.get(key), str):
      fields[key] = jnp.dtype(fields[key])
  fields["down_levels"] = tuple(fields["down_levels"])
  fields["up_levels"] = tuple(fields["up_levels"])
  return DenoiseUNet(**fields)
