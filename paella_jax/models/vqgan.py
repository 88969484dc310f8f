"""VQGAN image tokenizers in Flax linen (NHWC): Paella v1's Gumbel VQGAN and relatives.

Two architectures:
- `VQGAN`: the taming-transformers Encoder/Decoder (ResNet blocks with GroupNorm and swish,
  single-head self-attention at chosen resolutions, strided-conv downsampling, nearest-neighbour
  upsampling) with either quantizer:
    * "gumbel": logits = proj(z) over the codebook, code = argmax (Paella v1's ruDALL-E
      Sber-VQGAN, f=8, 8192 codes); an optional PRNG key draws the original's hard
      Gumbel-softmax sample instead.
    * "vq": nearest codebook vector (taming's VectorQuantizer, diffusers' `VQModel`).
  Images are mapped to [-1, 1] before the encoder; decoded images are clamped back to [0, 1].
- `PaellaVQ`: Paella v3's f4 VQGAN (diffusers' `PaellaVQModel`, used by Wuerstchen): pixel
  unshuffle, mixing residual blocks, a batch-normalised latent and a nearest-neighbour codebook.
  It works on images in [0, 1] directly.

Both expose the same inference API (params under the "params" collection only):
  codes = m.apply({"params": p}, images, method="encode")        # (B,H,W,3) [0,1] -> (B,h,w) int32
  images = m.apply({"params": p}, codes, method="decode_codes")  # (B,h,w) -> (B,H,W,3) [0,1]
H and W may be any multiple of the downsampling factor (`m.factor`): the modules are fully
convolutional and attention acts on whatever grid it receives.

Sub-module names mirror the PyTorch module paths (an "_" before each index) so that the weight
converters can map parameter paths mechanically.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from paella_jax.models.activations import ACTIVATIONS

Dtype = Any


# ----------------------------------------------------------------------------------------------
# Input validation (shapes always; values only for concrete arrays, i.e. outside jit)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_images(images, factor: int, channels: int = 3) -> None:
  """Raises ValueError unless `images` is (B,H,W,channels), H and W multiples of `factor`, in [0,1]."""
  shape = tuple(np.shape(images))
  if len(shape) != 4 or shape[-1] != channels:
    raise ValueError(f"images must have shape (batch, height, width, {channels}) (NHWC); "
                     f"got shape {shape}")
  if shape[1] % factor or shape[2] % factor or shape[1] == 0 or shape[2] == 0:
    raise ValueError(f"image height and width must be positive multiples of the VQGAN's "
                     f"downsampling factor {factor}; got {shape[1]}x{shape[2]}")
  if _is_concrete(images) and np.size(images):
    values = np.asarray(images)
    lo, hi = float(values.min()), float(values.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
      raise ValueError(f"images must be in [0, 1]; got values in [{lo:g}, {hi:g}]")


def check_codes(codes, n_embed: int) -> None:
  """Raises ValueError unless `codes` is an integer (B,h,w) array with values in [0, n_embed)."""
  shape = tuple(np.shape(codes))
  if len(shape) != 3:
    raise ValueError(f"codes must have shape (batch, height, width); got shape {shape}")
  if not jnp.issubdtype(jnp.result_type(codes), jnp.integer):
    raise ValueError(f"codes must be integers; got dtype {jnp.result_type(codes)}")
  if _is_concrete(codes) and np.size(codes):
    values = np.asarray(codes)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n_embed:
      raise ValueError(f"codes must be in [0, {n_embed}); got values in [{lo}, {hi}]")


# ----------------------------------------------------------------------------------------------
# Building blocks


def _conv(features: int, kernel: int, name: str, dtype: Dtype, param_dtype: Dtype,
          stride: int = 1, padding: Any = None, groups: int = 1, use_bias: bool = True) -> nn.Conv:
  """A PyTorch-style Conv2d: symmetric padding kernel//2 unless `padding` is given."""
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype,
                 param_dtype=param_dtype, name=name)


def _group_norm(groups: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  """GroupNorm with PyTorch's two-pass variance and eps 1e-6."""
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class ResnetBlock(nn.Module):
  """norm-act-conv3x3 twice, plus a 1x1 shortcut when the width changes. (B,H,W,C) -> (B,H,W,out)."""
  out_channels: int
  groups: int = 32
  act: str = "swish"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.act]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _conv(self.out_channels, 3, "conv1", **kw)(act(_group_norm(self.groups, "norm1", **kw)(x)))
    h = _conv(self.out_channels, 3, "conv2", **kw)(act(_group_norm(self.groups, "norm2", **kw)(h)))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "nin_shortcut", **kw)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, residual. (B,H,W,C) -> (B,H,W,C)."""
  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _group_norm(self.groups, "norm", **kw)(x)
    q, k, v = (_conv(c, 1, n, **kw)(h).reshape(b, hgt * wid, c) for n in ("q", "k", "v"))
    scores = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) * c ** -0.5
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    h = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, hgt, wid, c)
    return x + _conv(c, 1, "proj_out", **kw)(h)


class Downsample(nn.Module):
  """Zero-pad right/bottom by one, then conv k3 s2 (taming's asymmetric downsampling). H,W -> H/2,W/2."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype, stride=2,
                 padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then conv k3. H,W -> 2H,2W."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, "conv", self.dtype, self.param_dtype)(x)


def attention_levels(resolution: int, num_levels: int, attn_resolutions: Sequence[int]
                     ) -> tuple[int, ...]:
  """The level indices whose nominal resolution (resolution / 2**level) is in attn_resolutions."""
  return tuple(i for i in range(num_levels) if resolution // 2 ** i in tuple(attn_resolutions))


class Encoder(nn.Module):
  """taming's Encoder: (B,H,W,in) -> (B,H/f,W/f,z_channels), f = 2**(len(ch_mult)-1)."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_levels: Sequence[int]
  z_channels: int
  groups: int = 32
  mid_attention: bool = True
  act: str = "swish"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blk = dict(groups=self.groups, act=self.act, **kw)
    h = _conv(self.ch, 3, "conv_in", **kw)(x)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, name=f"down_{i}_block_{j}", **blk)(h)
        if i in self.attn_levels:
          h = AttnBlock(self.groups, name=f"down_{i}_attn_{j}", **kw)(h)
      if i != len(self.ch_mult) - 1:
        h = Downsample(name=f"down_{i}_downsample", **kw)(h)
    h = _mid(h, self.groups, self.mid_attention, blk, kw)
    h = ACTIVATIONS[self.act](_group_norm(self.groups, "norm_out", **kw)(h))
    return _conv(self.z_channels, 3, "conv_out", **kw)(h)


class Decoder(nn.Module):
  """taming's Decoder: (B,h,w,z) -> (B,h*f,w*f,out_channels), unclamped (about [-1, 1])."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_levels: Sequence[int]
  out_channels: int = 3
  groups: int = 32
  mid_attention: bool = True
  act: str = "swish"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    blk = dict(groups=self.groups, act=self.act, **kw)
    h = _conv(self.ch * self.ch_mult[-1], 3, "conv_in", **kw)(z)
    h = _mid(h, self.groups, self.mid_attention, blk, kw)
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * self.ch_mult[i], name=f"up_{i}_block_{j}", **blk)(h)
        if i in self.attn_levels:
          h = AttnBlock(self.groups, name=f"up_{i}_attn_{j}", **kw)(h)
      if i != 0:
        h = Upsample(name=f"up_{i}_upsample", **kw)(h)
    h = ACTIVATIONS[self.act](_group_norm(self.groups, "norm_out", **kw)(h))
    return _conv(self.out_channels, 3, "conv_out", **kw)(h)


def _mid(h, groups, attention, blk, kw):
  """The middle of the Encoder/Decoder: ResnetBlock, [attention], ResnetBlock (same width)."""
  h = ResnetBlock(h.shape[-1], name="mid_block_1", **blk)(h)
  if attention:
    h = AttnBlock(groups, name="mid_attn_1", **kw)(h)
  return ResnetBlock(h.shape[-1], name="mid_block_2", **blk)(h)


# ----------------------------------------------------------------------------------------------
# Quantizers


class GumbelQuantizer(nn.Module):
  """Gumbel-softmax quantizer: logits = proj(z) over `n_embed` codes, each code an embedding."""
  n_embed: int
  embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.proj = _conv(self.n_embed, 1, None, self.dtype, self.param_dtype)
    self.embed = nn.Embed(self.n_embed, self.embed_dim, dtype=self.dtype,
                          param_dtype=self.param_dtype)

  def logits(self, z):
    """(B,h,w,C) -> (B,h,w,n_embed) float32 code logits."""
    return self.proj(z).astype(jnp.float32)

  def codes(self, z, rng=None):
    """Argmax code (B,h,w) int32; with `rng`, a hard Gumbel-softmax sample (argmax of logits+G)."""
    logits = self.logits(z)
    if rng is not None:
      logits = logits + jax.random.gumbel(rng, logits.shape, jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def lookup(self, codes):
    """(B,h,w) int -> (B,h,w,embed_dim)."""
    return self.embed(codes)

  def __call__(self, z, rng, temperature: float = 1.0):
    """Training forward: straight-through hard Gumbel-softmax sample.

    Returns (z_q (B,h,w,embed_dim), kl (scalar, KL(q || uniform) averaged over positions),
    codes (B,h,w) int32). The caller weighs the KL term.
    """
    logits = self.logits(z)
    soft = jax.nn.softmax((logits + jax.random.gumbel(rng, logits.shape)) / temperature, axis=-1)
    codes = jnp.argmax(soft, axis=-1)
    one_hot = jax.nn.one_hot(codes, self.n_embed, dtype=soft.dtype)
    one_hot = one_hot + soft - jax.lax.stop_gradient(soft)
    z_q = one_hot.astype(self.dtype) @ self.embed.embedding.astype(self.dtype)
    q = jax.nn.softmax(logits, axis=-1)
    kl = jnp.mean(jnp.sum(q * jnp.log(q * self.n_embed + 1e-10), axis=-1))
    return z_q, kl, codes.astype(jnp.int32)


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantizer (VQ-VAE) with a straight-through gradient.

  `legacy=True` reproduces taming's/diffusers' default loss, where `beta` weighs the codebook
  term instead of the commitment term: loss = |sg(z_q) - z|^2 + beta |z_q - sg(z)|^2.
  With `legacy=False`: loss = beta |sg(z_q) - z|^2 + |z_q - sg(z)|^2 (the VQ-VAE paper's).
  """
  n_embed: int
  embed_dim: int
  beta: float = 0.25
  legacy: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    init = nn.initializers.uniform(2.0 / self.n_embed)
    self.embedding = nn.Embed(self.n_embed, self.embed_dim, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              embedding_init=lambda *a: init(*a) - 1.0 / self.n_embed)

  def logits(self, z):
    """(B,h,w,C) -> (B,h,w,n_embed) float32 negative squared distances to each code."""
    z = z.astype(jnp.float32)
    e = self.embedding.embedding.astype(jnp.float32)
    d = (jnp.sum(z ** 2, axis=-1, keepdims=True) + jnp.sum(e ** 2, axis=-1)
         - 2.0 * jnp.einsum("...c,nc->...n", z, e, precision=jax.lax.Precision.HIGHEST))
    return -d

  def codes(self, z, rng=None):
    """Nearest code (B,h,w) int32. `rng` is accepted for interface parity and must be None."""
    if rng is not None:
      raise ValueError("the nearest-neighbour quantizer is deterministic: pass rng=None")
    return jnp.argmax(self.logits(z), axis=-1).astype(jnp.int32)

  def lookup(self, codes):
    """(B,h,w) int -> (B,h,w,embed_dim)."""
    return self.embedding(codes)

  def __call__(self, z, rng=None, temperature: float = 1.0):
    """Training forward: returns (z_q straight-through, codebook+commitment loss, codes)."""
    del rng, temperature  # interface parity with GumbelQuantizer
    codes = self.codes(z)
    z_q = self.lookup(codes).astype(z.dtype)
    sg = jax.lax.stop_gradient
    commit = jnp.mean((sg(z_q) - z).astype(jnp.float32) ** 2)
    codebook = jnp.mean((z_q - sg(z)).astype(jnp.float32) ** 2)
    loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
    return z + sg(z_q - z), loss, codes


# ----------------------------------------------------------------------------------------------
# The taming VQGAN


class VQGAN(nn.Module):
  """taming-transformers VQGAN (Encoder, quant_conv, quantizer, post_quant_conv, Decoder).

  `attn_resolutions` and `resolution` place attention like taming does (at the levels whose
  nominal size resolution/2**level is listed); at run time any multiple of `factor` works.
  The defaults are Paella v1's ruDALL-E Sber-VQGAN (f=8, 8192 codes).
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32,)
  resolution: int = 256
  z_channels: int = 256
  embed_dim: int = 256
  n_embed: int = 8192
  quantizer: str = "gumbel"  # "gumbel" | "vq"
  in_channels: int = 3
  out_channels: int = 3
  norm_groups: int = 32
  mid_attention: bool = True
  act: str = "swish"
  beta: float = 0.25
  legacy: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def factor(self) -> int:
    """The spatial downsampling factor (image size / token grid size)."""
    return 2 ** (len(self.ch_mult) - 1)

  def setup(self):
    if self.quantizer not in ("gumbel", "vq"):
      raise ValueError(f"quantizer must be 'gumbel' or 'vq', got {self.quantizer!r}")
    if self.act not in ACTIVATIONS:
      raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    net = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
               attn_levels=attention_levels(self.resolution, len(self.ch_mult),
                                            self.attn_resolutions),
               groups=self.norm_groups, mid_attention=self.mid_attention, act=self.act, **kw)
    self.encoder = Encoder(z_channels=self.z_channels, **net)
    self.decoder = Decoder(out_channels=self.out_channels, **net)
    if self.quantizer == "gumbel":
      self.quant_conv = _conv(self.z_channels, 1, None, **kw)
      self.quantize = GumbelQuantizer(self.n_embed, self.embed_dim, **kw)
    else:
      self.quant_conv = _conv(self.embed_dim, 1, None, **kw)
      self.quantize = VectorQuantizer(self.n_embed, self.embed_dim, self.beta, self.legacy, **kw)
    self.post_quant_conv = _conv(self.z_channels, 1, None, **kw)

  def encode_latents(self, images):
    """Images (B,H,W,in) in [0,1] -> pre-quantization latents (B,h,w,C) (after quant_conv)."""
    check_images(images, self.factor, self.in_channels)
    return self.quant_conv(self.encoder((2.0 * images - 1.0).astype(self.dtype)))

  def quantizer_logits(self, images):
    """(B,H,W,3) in [0,1] -> (B,h,w,n_embed) float32: Gumbel logits, or -squared distances."""
    return self.quantize.logits(self.encode_latents(images))

  def encode(self, images, rng=None):
    """(B,H,W,3) in [0,1] -> codes (B,H/f,W/f) int32 (argmax; a Gumbel sample given `rng`)."""
    return self.quantize.codes(self.encode_latents(images), rng)

  def decode_latents(self, z_q):
    """Quantized latents (B,h,w,embed_dim) -> unclamped images (B,H,W,3), about [-1,1], float32."""
    return self.decoder(self.post_quant_conv(z_q.astype(self.dtype))).astype(jnp.float32)

  def decode_codes_raw(self, codes):
    """Codes (B,h,w) -> the decoder's unclamped output (B,H,W,3), about [-1,1], float32."""
    check_codes(codes, self.n_embed)
    return self.decode_latents(self.quantize.lookup(codes))

  def decode_codes(self, codes):
    """Codes (B,h,w) int -> images (B,h*f,w*f,3) in [0,1] float32."""
    return (jnp.clip(self.decode_codes_raw(codes), -1.0, 1.0) + 1.0) / 2.0

  def reconstruct(self, images):
    """(B,H,W,3) in [0,1] -> encode then decode, (B,H,W,3) in [0,1]. Touches every parameter."""
    return self.decode_codes(self.encode(images))

  def __call__(self, images, rng=None, temperature: float = 1.0):
    """Training forward: images in [0,1] -> (reconstruction in [-1,1] space, aux loss, codes).

    The aux loss is the Gumbel KL term (unweighted) or the codebook+commitment loss. The Gumbel
    quantizer needs `rng`; `temperature` is its softmax temperature.
    """
    if self.quantizer == "gumbel" and rng is None:
      raise ValueError("training the Gumbel quantizer needs a PRNG key: pass rng=...")
    z_q, aux, codes = self.quantize(self.encode_latents(images), rng, temperature)
    return self.decode_latents(z_q), aux, codes


# ----------------------------------------------------------------------------------------------
# Paella v3's f4 VQGAN


class MixingResidualBlock(nn.Module):
  """Depthwise (edge-padded 3x3) then channelwise MLP mixing, each gated by learned scalars."""
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    g = self.param("gammas", nn.initializers.zeros, (6,), self.param_dtype).astype(self.dtype)
    norm = lambda y: nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False,
                                  use_fast_variance=False, dtype=self.dtype)(y)
    h = norm(x) * (1 + g[0]) + g[1]
    h = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    x = x + _conv(c, 3, "depthwise_1", padding=0, groups=c, **kw)(h) * g[2]
    h = norm(x) * (1 + g[3]) + g[4]
    h = nn.Dense(self.hidden, name="channelwise_0", **kw)(h)
    h = nn.Dense(c, name="channelwise_2", **kw)(nn.gelu(h, approximate=False))
    return x + h * g[5]


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm: (x - mean) / sqrt(var + eps) * scale + bias (stats in params)."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = (x.shape[-1],)
    p = {n: self.param(n, init, c, self.param_dtype) for n, init in
         (("mean", nn.initializers.zeros), ("var", nn.initializers.ones),
          ("scale", nn.initializers.ones), ("bias", nn.initializers.zeros))}
    x = x.astype(jnp.float32)
    return ((x - p["mean"]) * jax.lax.rsqrt(p["var"] + self.eps) * p["scale"]
            + p["bias"]).astype(self.dtype)


def _pixel_unshuffle(x, r: int):
  """(B,H,W,C) -> (B,H/r,W/r,C*r*r), channel order c*r*r + i*r + j like torch.nn.PixelUnshuffle."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // r, w // r, c * r * r)


def _pixel_shuffle(x, r: int):
  """The inverse of `_pixel_unshuffle`: (B,h,w,C*r*r) -> (B,h*r,w*r,C)."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


class PaellaEncoder(nn.Module):
  """Paella v3 encoder: (B,H,W,in) in [0,1] -> batch-normalised latents (B,H/f,W/f,latent)."""
  c_levels: Sequence[int]
  latent_channels: int
  up_down_scale_factor: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = self.c_levels
    h = _conv(c[0], 1, "in_block_1", **kw)(_pixel_unshuffle(x, self.up_down_scale_factor))
    k = 0
    for i in range(len(c)):
      if i > 0:
        h = _conv(c[i], 4, f"down_blocks_{k}", stride=2, padding=1, **kw)(h)
        k += 1
      h = MixingResidualBlock(c[i] * 4, name=f"down_blocks_{k}", **kw)(h)
      k += 1
    h = _conv(self.latent_channels, 1, f"down_blocks_{k}_0", use_bias=False, **kw)(h)
    return FrozenBatchNorm(name=f"down_blocks_{k}_1", **kw)(h)


class PaellaDecoder(nn.Module):
  """Paella v3 decoder: latents (B,h,w,latent) -> unclamped images (B,h*f,w*f,out)."""
  c_levels: Sequence[int]
  bottleneck_blocks: int
  out_channels: int = 3
  up_down_scale_factor: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = list(reversed(self.c_levels))
    h = _conv(c[0], 1, "up_blocks_0_0", **kw)(z)
    k = 1
    for i, width in enumerate(c):
      for _ in range(self.bottleneck_blocks if i == 0 else 1):
        h = MixingResidualBlock(width * 4, name=f"up_blocks_{k}", **kw)(h)
        k += 1
      if i < len(c) - 1:
        h = ConvTranspose4x4(c[i + 1], name=f"up_blocks_{k}", **kw)(h)
        k += 1
    h = _conv(self.out_channels * self.up_down_scale_factor ** 2, 1, "out_block_0", **kw)(h)
    return _pixel_shuffle(h, self.up_down_scale_factor)


class PaellaVQ(nn.Module):
  """Paella v3's VQGAN (diffusers `PaellaVQModel`); f = up_down_scale_factor * 2**(levels-1).

  Encoder: pixel-unshuffle, 1x1 conv, per level [conv k4 s2] + mixing block, 1x1 conv to
  `latent_channels`, BatchNorm. Decoder: 1x1 conv, `bottleneck_blocks` mixing blocks at the lowest
  level and one per other level with transposed convs (k4 s2 p1) between, 1x1 conv, pixel shuffle.
  Images stay in [0,1] (no rescaling); decoded images are clamped to [0,1].
  """
  in_channels: int = 3
  out_channels: int = 3
  up_down_scale_factor: int = 2
  levels: int = 2
  bottleneck_blocks: int = 12
  embed_dim: int = 384
  latent_channels: int = 4
  n_embed: int = 8192
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def factor(self) -> int:
    """The spatial downsampling factor (image size / token grid size)."""
    return self.up_down_scale_factor * 2 ** (self.levels - 1)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c_levels = tuple(self.embed_dim // 2 ** i for i in reversed(range(self.levels)))
    self.encoder = PaellaEncoder(c_levels, self.latent_channels, self.up_down_scale_factor, **kw)
    self.vquantizer = VectorQuantizer(self.n_embed, self.latent_channels, legacy=False, **kw)
    self.decoder = PaellaDecoder(c_levels, self.bottleneck_blocks, self.out_channels,
                                 self.up_down_scale_factor, **kw)

  def encode_latents(self, images):
    """Images (B,H,W,in) in [0,1] -> batch-normalised latents (B,H/f,W/f,latent_channels)."""
    check_images(images, self.factor, self.in_channels)
    return self.encoder(images.astype(self.dtype))

  def quantizer_logits(self, images):
    """(B,H,W,3) in [0,1] -> (B,h,w,n_embed) float32 negative squared distances to the codes."""
    return self.vquantizer.logits(self.encode_latents(images))

  def encode(self, images, rng=None):
    """(B,H,W,3) in [0,1] -> codes (B,H/f,W/f) int32 (nearest codebook entry)."""
    return self.vquantizer.codes(self.encode_latents(images), rng)

  def decode_latents(self, z_q):
    """Latents (B,h,w,latent_channels) -> unclamped images (B,H,W,3) float32 (about [0,1])."""
    return self.decoder(z_q.astype(self.dtype)).astype(jnp.float32)

  def decode_codes_raw(self, codes):
    """Codes (B,h,w) -> the unclamped decoder output (B,H,W,3) float32."""
    check_codes(codes, self.n_embed)
    return self.decode_latents(self.vquantizer.lookup(codes))

  def decode_codes(self, codes):
    """Codes (B,h,w) int -> images (B,h*f,w*f,3) in [0,1] float32."""
    return jnp.clip(self.decode_codes_raw(codes), 0.0, 1.0)

  def reconstruct(self, images):
    """(B,H,W,3) in [0,1] -> encode then decode, (B,H,W,3) in [0,1]. Touches every parameter."""
    return self.decode_codes(self.encode(images))


class ConvTranspose4x4(nn.Module):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1): (B,H,W,C) -> (B,2H,2W,features).

  Implemented as a stride-1 convolution of the input dilated by 2 (padding 2 = k-1-p) with the
  spatially flipped kernel. `kernel` is stored in PyTorch's (in, out) order as (4,4,in,out).
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (4, 4, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype), window_strides=(1, 1),
        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def init_params(module: nn.Module, rng: jax.Array, image_size: int) -> dict:
  """Fresh parameters of a VQGAN/PaellaVQ, initialised on one (1, size, size, C) zero image
  (any size divisible by the factor gives the same shapes)."""
  images = jnp.zeros((1, image_size, image_size, module.in_channels), jnp.float32)
  return module.init(rng, images, method="reconstruct")["params"]


# ----------------------------------------------------------------------------------------------
# Config dicts (what converted checkpoints store in model.json)

ARCHITECTURES = {"taming": VQGAN, "paella_f4": PaellaVQ}


def vqgan_config(module: nn.Module) -> dict[str, Any]:
  """The JSON-serialisable description of a VQGAN/PaellaVQ module, for `vqgan_from_config`."""
  arch = next(k for k, cls in ARCHITECTURES.items() if isinstance(module, cls))
  fields = {f: getattr(module, f) for f in module.__dataclass_fields__
            if f not in ("parent", "name", "dtype", "param_dtype")}
  return {"architecture": arch,
          **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def vqgan_from_config(config: Mapping[str, Any], dtype: Dtype = jnp.float32,
                      param_dtype: Dtype = jnp.float32) -> nn.Module:
  """Builds a VQGAN/PaellaVQ from a `vqgan_config` dict (or an ml_collections config).

  Raises ValueError naming unknown architectures and fields.
  """
  config = dict(config)
  arch = config.pop("architecture", "taming")
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown VQGAN architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
  cls = ARCHITECTURES[arch]
  unknown = sorted(set(config) - set(cls.__dataclass_fields__))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} config fields: {', '.join(unknown)}")
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
  return cls(**config, dtype=dtype, param_dtype=param_dtype)
