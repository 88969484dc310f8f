"""Paella v3 token predictor (`Paella`, the 2023 release) as a Flax linen module, NHWC.

A U-Net over VQ tokens built from four kinds of block, one per letter of a level's pattern:
  C  ResBlock: depthwise kxk conv over [x, skip] -> LayerNorm -> Linear 4c -> GELU ->
     GlobalResponseNorm -> Linear c; plus x.
  T  TimestepBlock: x * (1 + a) + b with (a, b) a linear map of the r embedding (FiLM).
  A  AttnBlock: x + MHA(LN(x), kv, kv), kv = [LN(x) tokens, SiLU -> Linear(conditioning)] with
     self-attention, else the mapped conditioning alone.
  F  FeedForwardBlock: x + MLP(LN(x)) with the ResBlock's MLP.
Tokens are embedded (Embedding -> LayerNorm), patchified (pixel unshuffle + 1x1 conv), run through
the down levels (LayerNorm + 2x2 stride-2 conv between them) and the up levels (the first block
of each level below the top takes the matching down output as skip; LayerNorm + 2x2 stride-2
transposed conv between them), unpatchified (1x1 conv + pixel shuffle) and mapped to logits.
The conditioning is a sequence: mapped ByT5 hidden states ++ CLIP text embedding as
`clip_seq_len` tokens ++ CLIP image embedding as `clip_seq_len` tokens (each optional), layer
normalised.

Parameters carry logical axis names ("vocab", "embed", "mlp", "cond", "conv_in", "heads") that a
config's sharding rules map onto a device mesh; activations are constrained at every block
boundary to ("batch", None, None, "act_embed") (sequences: ("batch", None, "act_embed"); MLP
hidden units "act_mlp", logits "act_vocab"), as v1's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from paella_jax.models.paella import REMAT_POLICIES
from paella_jax.noise import sinusoidal_embedding

Dtype = Any
LN_EPS = 1e-6
GRN_EPS = 1e-6
BLOCK_TYPES = "CTAF"
ACT_AXES = ("batch", None, None, "act_embed")
ACT_MLP = ("batch", None, None, "act_mlp")
ACT_VOCAB = ("batch", None, None, "act_vocab")
SEQ_AXES = ("batch", None, "act_embed")


def _init(initializer, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(initializer, axes)


def _xavier(gain: float = 1.0, **kw):
  """Glorot-uniform scaled by `gain` (PyTorch's xavier_uniform_(w, gain))."""
  return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "uniform", **kw)


def _dense(features: int, axes: tuple[str | None, str | None], name: str, dtype: Dtype,
           param_dtype: Dtype, use_bias: bool = True, kernel_init=None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=_init(kernel_init or _xavier(), axes),
                  bias_init=_init(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm over the last axis without affine parameters (eps 1e-6, two-pass variance),
  with its statistics in float32; returns the dtype of x."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + LN_EPS)).astype(x.dtype)


def _constrain(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ACT_AXES if x.ndim == 4 else SEQ_AXES)


class _Heads(nn.Module):
  """A multi-head projection in nn.DenseGeneral's parameter layout: (..., c) -> (..., nhead,
  head_dim) with kernel (c, nhead, head_dim) and bias (nhead, head_dim); with `merge`,
  (..., nhead, head_dim) -> (..., c) with kernel (nhead, head_dim, c) and bias (c,). Kernels
  are Glorot-uniform as the 2-D matrices PyTorch's MultiheadAttention holds. (DenseGeneral
  itself reshapes its kernel inside the initializer, where logical-axis constraints fail.)"""
  nhead: int
  head_dim: int
  merge: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, d = self.nhead, self.head_dim
    if self.merge:  # width c = n * d
      shape, flat, axes = (n, d, n * d), (n * d, n * d), ("heads", None, "embed")
      bias_shape, bias_axes = (n * d,), ("embed",)  # "...nd,ndc->...c"
    else:
      c = x.shape[-1]
      shape, flat, axes = (c, n, d), (c, n * d), ("embed", "heads", None)
      bias_shape, bias_axes = (n, d), ("heads", None)  # "...c,cnd->...nd"

    def init(key, full_shape, dtype=jnp.float32):
      return _xavier()(key, flat, dtype).reshape(full_shape)

    kernel = self.param("kernel", _init(init, axes), shape, self.param_dtype)
    bias = self.param("bias", _init(nn.initializers.zeros_init(), bias_axes), bias_shape,
                      self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # the contraction as one dot_general (what einsum lowers to), the form LoRA (qwix) adapts
    contracted = (x.ndim - 2, x.ndim - 1) if self.merge else (x.ndim - 1,)
    kernel_axes = tuple(range(len(contracted)))
    return jax.lax.dot_general(x, kernel, ((contracted, kernel_axes), ((), ()))) + bias


class GlobalResponseNorm(nn.Module):
  """ConvNeXt-V2 GRN: gamma * (x * Nx) + beta + x, Nx = ||x||_2 over (H, W) divided by its
  mean over channels (+ 1e-6). x: (B, H, W, C)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", _init(nn.initializers.zeros_init(), ("mlp",)), (c,),
                       self.param_dtype)
    beta = self.param("beta", _init(nn.initializers.zeros_init(), ("mlp",)), (c,),
                      self.param_dtype)
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))
    scale = (norm / (jnp.mean(norm, axis=-1, keepdims=True) + GRN_EPS)).astype(self.dtype)
    return gamma.astype(self.dtype) * (x * scale) + beta.astype(self.dtype) + x


class ChannelMLP(nn.Module):
  """Linear c -> 4c, GELU (exact), GlobalResponseNorm, Linear 4c -> c: (B, H, W, c) -> same.
  `out_gain` scales the last layer's initial kernel (the original: sqrt(1 / sum(blocks)))."""
  out_gain: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c, kw = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.with_logical_constraint(_dense(4 * c, ("embed", "mlp"), "mlp_in", **kw)(x), ACT_MLP)
    h = GlobalResponseNorm(**kw, name="grn")(nn.gelu(h, approximate=False))
    return _dense(c, ("mlp", "embed"), "mlp_out", **kw, kernel_init=_xavier(self.out_gain))(h)


class GroupedDepthwiseConv(nn.Module):
  """PyTorch `Conv2d(c_in, c, k, padding=k // 2, groups=c)` with c_in a multiple of c:
  (B, H, W, c_in) -> (B, H, W, features), output channel g summing input channels
  [g * m, (g + 1) * m) with m = c_in / c (m = 1: a plain depthwise conv).

  Written as k*k shifted multiply-adds, which XLA fuses into one elementwise pass (its grouped
  convolution is much slower on CPUs). Kernel in nn.Conv's grouped layout (k, k, m, features).
  """
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    (h, w), c_in, k = x.shape[1:3], x.shape[-1], self.kernel_size
    if c_in % self.features:
      raise ValueError(f"{c_in} input channels are not a multiple of {self.features} groups")
    m = c_in // self.features
    kernel = self.param("kernel", _init(nn.initializers.lecun_normal(),
                                        (None, None, None, "embed")),
                        (k, k, m, self.features), self.param_dtype)
    bias = self.param("bias", _init(nn.initializers.zeros_init(), ("embed",)),
                      (self.features,), self.param_dtype)
    pad = k // 2
    padded = jnp.pad(x.astype(self.dtype), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # Tap (i, j) as one weight per input channel, in the input's channel order.
    taps = jnp.swapaxes(kernel.astype(self.dtype), 2, 3).reshape(k, k, c_in)
    out = sum(padded[:, i:i + h, j:j + w] * taps[i, j] for i in range(k) for j in range(k))
    if m > 1:
      out = out.reshape(*out.shape[:-1], self.features, m).sum(-1)
    return out + bias.astype(self.dtype)


class ResBlock(nn.Module):
  """C: x + MLP(LN(DWConv([x, skip]))). x (B, H, W, c); skip (B, H, W, c_skip) or None."""
  kernel_size: int = 3
  out_gain: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, skip=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x if skip is None else jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    h = GroupedDepthwiseConv(x.shape[-1], self.kernel_size, **kw, name="depthwise")(h)
    return x + ChannelMLP(self.out_gain, **kw, name="mlp")(layer_norm(h))


class TimestepBlock(nn.Module):
  """T: x * (1 + a) + b, (a, b) = Linear(r_embed). x (B, H, W, c); r_embed (B, c_r)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, r_embed):
    c = x.shape[-1]
    # Zero-initialised, as the original: every T block starts as the identity.
    ab = _dense(2 * c, ("cond", "embed"), "mapper", self.dtype, self.param_dtype,
                kernel_init=nn.initializers.zeros_init())(r_embed)
    a, b = jnp.split(ab[:, None, None, :], 2, axis=-1)
    return x * (1 + a) + b


class AttnBlock(nn.Module):
  """A: x + MHA(LN(x), kv, kv), kv = [LN(x) tokens (with self_attn), SiLU -> Linear(cond)].

  x (B, H, W, c); cond (B, S, c_cond); cond_mask (B, S) bool (True = attend) or None.
  Attention through `jax.nn.dot_product_attention` (fused kernels where the platform has them).
  """
  nhead: int
  self_attn: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, cond_mask=None):
    b, h, w, c = x.shape
    if c % self.nhead:
      raise ValueError(f"width {c} is not divisible by {self.nhead} attention heads")
    head_dim, kw = c // self.nhead, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    kv = _dense(c, ("cond", "embed"), "kv_mapper", **kw)(nn.silu(cond))
    q_in = layer_norm(x).reshape(b, h * w, c)
    mask = cond_mask
    if self.self_attn:
      kv = jnp.concatenate([q_in, kv.astype(q_in.dtype)], axis=1)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones((b, h * w), bool), mask], axis=1)
    kv = _constrain(kv)

    q, k, v = (_Heads(self.nhead, head_dim, name=name, **kw)(inputs)
               for name, inputs in (("query", q_in), ("key", kv), ("value", kv)))
    attended = jax.nn.dot_product_attention(
        q, k, v, mask=None if mask is None else mask[:, None, None, :])
    out = _Heads(self.nhead, head_dim, merge=True, name="out", **kw)(attended)
    return x + out.reshape(b, h, w, c)


class FeedForwardBlock(nn.Module):
  """F: x + MLP(LN(x)). x (B, H, W, c)."""
  out_gain: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return x + ChannelMLP(self.out_gain, self.dtype, self.param_dtype, name="mlp")(layer_norm(x))


class Unpatchify(nn.Module):
  """A linear map of each pixel to a p x p patch: (B, H, W, C) -> (B, pH, pW, features).

  PyTorch's `ConvTranspose2d(k=p, stride=p)` (bias per output channel) and its 1x1 conv to
  features * p^2 channels followed by `PixelShuffle(p)` (bias per channel and patch position,
  `bias_per_position`). Kernel (p, p, C, features); bias (features,) or (p, p, features).
  """
  features: int
  patch: int
  bias_per_position: bool = False
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    p = self.patch
    init = nn.initializers.zeros_init() if self.zero_init else _xavier()
    kernel = self.param("kernel", _init(init,
                                        (None, None, "conv_in", "embed")),
                        (p, p, c, self.features), self.param_dtype)
    bias_shape, bias_axes = (((p, p, self.features), (None, None, "embed"))
                             if self.bias_per_position else ((self.features,), ("embed",)))
    bias = self.param("bias", _init(nn.initializers.zeros_init(), bias_axes), bias_shape,
                      self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
    y = y + (bias[None, None, :, None] if self.bias_per_position else bias)
    return y.reshape(b, h * p, w * p, self.features)


def _patch_conv(features: int, patch: int, name: str, dtype: Dtype, param_dtype: Dtype,
                gain: float = 1.0):
  """A p x p stride-p conv (PyTorch `PixelUnshuffle(p)` + 1x1 conv, or Conv2d(k=p, stride=p))."""
  return nn.Conv(features, (patch, patch), strides=(patch, patch), padding="VALID", name=name,
                 dtype=dtype, param_dtype=param_dtype,
                 kernel_init=_init(_xavier(gain),
                                   (None, None, "conv_in", "embed")),
                 bias_init=_init(nn.initializers.zeros_init(), ("embed",)))


def level_blocks(level_config: Sequence[str], blocks: Sequence[int], level: int) -> str:
  """The block letters of one level in order: its pattern repeated blocks[level] times."""
  return level_config[level] * blocks[level]


class PaellaV3(nn.Module):
  """Paella v3 token predictor.

  Call: (tokens int (B, h, w) in [0, num_labels), r (B,) noise level in [0, 1] (1 = all noise),
  byt5 (B, L, byt5_embd) or None, clip (B, clip_embd) or None, clip_image (B, clip_embd) or
  None, byt5_mask (B, L) bool (False = a padding token that no query attends to) or None) ->
  logits (B, h, w, num_labels) float32. h and w must be divisible by
  patch_size * 2 ** (levels - 1).
  """
  num_labels: int = 8192
  c_in: int = 256
  c_out: int = 256
  c_r: int = 64
  patch_size: int = 2
  c_cond: int = 1024
  c_hidden: Sequence[int] = (640, 1280, 1280)
  nhead: Sequence[int] = (-1, 16, 16)
  blocks: Sequence[int] = (6, 16, 6)
  level_config: Sequence[str] = ("CT", "CTA", "CTA")
  clip_embd: int = 1024
  byt5_embd: int = 2560
  clip_seq_len: int = 4
  kernel_size: int = 3
  self_attn: bool = True
  remat: str = "none"  # "none", "block" or "dots": activations each block keeps (v1's policies)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  ARCHITECTURE_FIELDS = ("num_labels", "c_in", "c_out", "c_r", "patch_size", "c_cond",
                         "c_hidden", "nhead", "blocks", "level_config", "clip_embd",
                         "byt5_embd", "clip_seq_len", "kernel_size", "self_attn")

  def architecture(self) -> dict[str, Any]:
    """The fields that define the parameters and the computation, as JSON-able values."""
    return {f: (list(v) if isinstance(v, (tuple, list)) else v)
            for f in self.ARCHITECTURE_FIELDS for v in [getattr(self, f)]}

  @property
  def latent_factor(self) -> int:
    """h and w must be multiples of this."""
    return self.patch_size * 2 ** (len(self.c_hidden) - 1)

  def _check(self, tokens, r, byt5, clip, clip_image, byt5_mask) -> None:
    levels = len(self.c_hidden)
    for name, value in (("nhead", self.nhead), ("blocks", self.blocks),
                        ("level_config", self.level_config)):
      if len(value) != levels:
        raise ValueError(f"{name} {tuple(value)} must have one entry per level ({levels})")
    for i, pattern in enumerate(self.level_config):
      if not pattern or set(pattern) - set(BLOCK_TYPES):
        raise ValueError(f"level_config[{i}] {pattern!r} must be letters of {BLOCK_TYPES}")
      if "A" in pattern and self.nhead[i] < 1:
        raise ValueError(f"level {i} has attention blocks but nhead {self.nhead[i]}")
    if self.remat != "none" and self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}, "
                       f"got {self.remat!r}")
    if tokens.ndim != 3 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an integer array (B, h, w), got {tokens.dtype} "
                       f"{tuple(tokens.shape)}")
    batch, factor = tokens.shape[0], self.latent_factor
    if tokens.shape[1] % factor or tokens.shape[2] % factor:
      raise ValueError(f"latent size {tuple(tokens.shape[1:])} must be divisible by {factor} "
                       f"(patch {self.patch_size}, {levels} levels)")
    if r.shape != (batch,):
      raise ValueError(f"r must be (B={batch},), got {tuple(r.shape)}")
    if byt5 is not None and (byt5.ndim != 3 or byt5.shape[0] != batch
                             or byt5.shape[2] != self.byt5_embd):
      raise ValueError(f"byt5 must be (B={batch}, L, {self.byt5_embd}), got {tuple(byt5.shape)}")
    for name, value in (("clip", clip), ("clip_image", clip_image)):
      if value is not None and value.shape != (batch, self.clip_embd):
        raise ValueError(f"{name} must be (B={batch}, {self.clip_embd}), got {tuple(value.shape)}")
    if byt5_mask is not None and (byt5 is None or byt5_mask.shape != byt5.shape[:2]):
      raise ValueError(f"byt5_mask must be (B, L) of byt5 {None if byt5 is None else byt5.shape},"
                       f" got {tuple(byt5_mask.shape)}")
    if byt5 is None and clip is None and clip_image is None and not self.self_attn:
      raise ValueError("without self-attention the model needs at least one conditioning input")
    if not isinstance(tokens, jax.core.Tracer):
      values = np.asarray(tokens)
      if values.size and (values.min() < 0 or values.max() >= self.num_labels):
        raise ValueError(f"token ids must lie in [0, {self.num_labels}), got [{values.min()}, "
                         f"{values.max()}]")

  def conditioning(self, byt5, clip, clip_image, byt5_mask):
    """The conditioning sequence (B, S, c_cond) and its key mask (B, S) bool or None."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=nn.initializers.normal(0.02))
    parts, masks = [], []
    if byt5 is not None:
      parts.append(_dense(self.c_cond, ("embed", "cond"), "byt5_mapper", **kw)(byt5))
      masks.append(byt5_mask)
    for name, value in (("clip_mapper", clip), ("clip_image_mapper", clip_image)):
      if value is not None:
        mapped = _dense(self.c_cond * self.clip_seq_len, ("embed", "cond"), name, **kw)(value)
        parts.append(mapped.reshape(value.shape[0], self.clip_seq_len, self.c_cond))
        masks.append(None)
    if not parts:
      return None, None
    seq = layer_norm(jnp.concatenate(parts, axis=1))
    mask = None
    if byt5_mask is not None:
      mask = jnp.concatenate([jnp.ones(p.shape[:2], bool) if m is None else m.astype(bool)
                              for p, m in zip(parts, masks)], axis=1)
    return seq, mask

  def _block(self, letter: str, level: int, name: str) -> nn.Module:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    cls = {"C": ResBlock, "T": TimestepBlock, "A": AttnBlock, "F": FeedForwardBlock}[letter]
    if self.remat != "none":
      cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat])
    out_gain = math.sqrt(1 / sum(self.blocks))
    if letter == "C":
      return cls(kernel_size=self.kernel_size, out_gain=out_gain, **kw)
    if letter == "A":
      return cls(nhead=self.nhead[level], self_attn=self.self_attn, **kw)
    if letter == "F":
      return cls(out_gain=out_gain, **kw)
    return cls(**kw)

  @nn.compact
  def __call__(self, tokens, r, byt5=None, clip=None, clip_image=None, byt5_mask=None):
    self._check(tokens, r, byt5, clip, clip_image, byt5_mask)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    levels = len(self.c_hidden)
    r_embed = sinusoidal_embedding(r.astype(jnp.float32), self.c_r).astype(self.dtype)
    seq, seq_mask = self.conditioning(byt5, clip, clip_image, byt5_mask)
    if seq is not None:
      seq = _constrain(seq)

    def run(block, letter, x, skip=None):
      if letter == "C":
        x = block(x, skip)
      elif letter == "T":
        x = block(x, r_embed)
      elif letter == "A":
        x = block(x, seq, seq_mask)
      else:
        x = block(x)
      return _constrain(x)

    x = nn.Embed(self.num_labels, self.c_in, name="in_mapper", **kw,
                 embedding_init=_init(nn.initializers.normal(math.sqrt(1 / self.num_labels)),
                                      ("vocab", "embed")))(tokens)
    x = _patch_conv(self.c_hidden[0], self.patch_size, "embedding", **kw, gain=0.02)(
        layer_norm(x))
    x = _constrain(layer_norm(x))

    level_outputs = []
    for i in range(levels):
      if i > 0:
        x = _patch_conv(self.c_hidden[i], 2, f"down_{i}_downsample", **kw)(layer_norm(x))
      for j, letter in enumerate(level_blocks(self.level_config, self.blocks, i)):
        x = run(self._block(letter, i, f"down_{i}_block_{j}"), letter, x)
      level_outputs.insert(0, x)

    x = level_outputs[0]
    for u, i in enumerate(reversed(range(levels))):
      for j, letter in enumerate(level_blocks(self.level_config, self.blocks, i)):
        skip = level_outputs[u] if (u > 0 and j == 0 and letter == "C") else None
        x = run(self._block(letter, i, f"up_{i}_block_{j}"), letter, x, skip)
      if i > 0:
        x = _constrain(Unpatchify(self.c_hidden[i - 1], 2, name=f"up_{i}_upsample", **kw)(
            layer_norm(x)))

    x = Unpatchify(self.c_out, self.patch_size, bias_per_position=True, zero_init=True,
                   name="clf", **kw)(layer_norm(x))
    logits = _dense(self.num_labels, ("embed", "vocab"), "out_mapper", **kw, use_bias=False)(
        layer_norm(x))
    return nn.with_logical_constraint(logits.astype(jnp.float32), ACT_VOCAB)


def example_inputs(model: PaellaV3, latent_shape: Sequence[int]) -> tuple:
  """The arguments of one call on a (1, h, w) zero token map with every conditioning input."""
  return (jnp.zeros((1, *latent_shape), jnp.int32), jnp.zeros((1,)),
          jnp.zeros((1, 1, model.byt5_embd)), jnp.zeros((1, model.clip_embd)),
          jnp.zeros((1, model.clip_embd)))


def init_params(model: PaellaV3, rng: jax.Array, latent_shape: Sequence[int],
                unbox: bool = True) -> dict:
  """Fresh parameters, initialised on `example_inputs`. The output map starts as the transposed
  input embedding (when c_in == c_out), as the original's. With unbox=False they keep their
  logical axis names (for `nn.get_partition_spec`)."""
  params = model.init(rng, *example_inputs(model, latent_shape))["params"]
  if model.c_in == model.c_out:
    out = params["out_mapper"]["kernel"]
    tied = nn.meta.unbox(params["in_mapper"]["embedding"]).T
    params = {**params, "out_mapper": {"kernel": out.replace_boxed(tied)
                                       if isinstance(out, nn.meta.AxisMetadata) else tied}}
  return nn.meta.unbox(params) if unbox else params


def build_model(config: Any) -> PaellaV3:
  """A PaellaV3 from a config mapping (dtype names such as "bfloat16" allowed)."""
  fields = dict(config)
  for key in ("dtype", "param_dtype"):
    if isinstance(fields.get(key), str):
      fields[key] = jnp.dtype(fields[key])
  for key in ("c_hidden", "nhead", "blocks", "level_config"):
    fields[key] = tuple(fields[key])
  return PaellaV3(**fields)
