"""CLIP text and image encoders (Radford et al. 2021) in Flax linen.

    model = CLIP(ClipConfig(...))
    text = model.apply({"params": p}, ids, method="encode_text")        # (B, L) int -> (B, P) f32
    tokens = model.apply({"params": p}, ids, method="text_hidden_states")  # -> (B, L, W_text) f32
    image = model.apply({"params": p}, pixels, method="encode_image")  # (B, S, S, 3) -> (B, P) f32

Embeddings are unnormalised (the projection of the pooled features), as Paella v1 uses them.
The towers follow the layout shared by OpenAI CLIP, open_clip and Hugging Face `CLIPModel`:
pre-LN transformer blocks (LN, multi-head attention, residual; LN, MLP, residual); the text tower
is causal and pools the final-LN state at the end-of-text token; the vision tower embeds patches
with a strided convolution, prepends a class token, applies a LN before the blocks and a LN to
the class token after them.

Precision: `param_dtype` is the storage type of the parameters, `dtype` the compute type of the
matrix products. Layer norms, the attention softmax and the residual stream stay in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.models.activations import ACTIVATIONS

# Normalisation of pixels in [0, 1] used by every CLIP release.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEXT_POOLING = ("argmax", "eos")


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The text tower.

  pool: "argmax" takes the state at the largest token id of each row (the end-of-text token of
  CLIP's vocabulary: OpenAI CLIP, open_clip, and Hugging Face configs with eos_token_id == 2);
  "eos" takes the first position of `eos_token_id` (newer Hugging Face configs).
  """
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_dim: int = 2048
  context_length: int = 77
  act: str = "quick_gelu"
  ln_eps: float = 1e-5
  pool: str = "argmax"
  eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The vision tower (ViT): square images of `image_size` pixels, `patch_size` patches."""
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  heads: int = 12
  layers: int = 12
  mlp_dim: int = 3072
  act: str = "quick_gelu"
  ln_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Both towers and the shared embedding size; `vision=None` builds a text-only model."""
  text: TextConfig
  vision: VisionConfig | None
  projection_dim: int

  def __post_init__(self):
    for tower in (self.text, self.vision):
      if tower is None:
        continue
      if tower.act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {tower.act!r}; expected one of {list(ACTIVATIONS)}")
      if tower.width % tower.heads:
        raise ValueError(f"width {tower.width} is not divisible by heads {tower.heads}")
    if self.text.pool not in TEXT_POOLING:
      raise ValueError(f"unknown text pooling {self.text.pool!r}; expected one of {TEXT_POOLING}")
    if self.vision is not None and self.vision.image_size % self.vision.patch_size:
      raise ValueError(f"image_size {self.vision.image_size} is not a multiple of "
                       f"patch_size {self.vision.patch_size}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ClipConfig":
    vision = d.get("vision")
    return cls(text=TextConfig(**d["text"]),
               vision=None if vision is None else VisionConfig(**vision),
               projection_dim=int(d["projection_dim"]))


def _layer_norm(eps: float, param_dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name)


class Attention(nn.Module):
  """Multi-head self-attention, (B, L, W) -> (B, L, W); softmax in float32."""
  heads: int
  causal: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, length, width = x.shape
    head_dim = width // self.heads
    dense = lambda name: nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    split = lambda y: y.reshape(b, length, self.heads, head_dim)
    q = split(dense("q_proj")(x)) * jnp.asarray(head_dim ** -0.5, self.dtype)
    k = split(dense("k_proj")(x))
    v = split(dense("v_proj")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if self.causal:
      logits = jnp.where(jnp.tril(jnp.ones((length, length), bool)), logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, width)
    return dense("out_proj")(out)


class EncoderLayer(nn.Module):
  """Pre-LN transformer block, (B, L, W) float32 -> (B, L, W) float32."""
  heads: int
  mlp_dim: int
  act: str
  ln_eps: float
  causal: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = _layer_norm(self.ln_eps, self.param_dtype, "layer_norm1")(x)
    x = x + Attention(self.heads, self.causal, self.dtype, self.param_dtype, name="self_attn")(h)
    h = _layer_norm(self.ln_eps, self.param_dtype, "layer_norm2")(x)
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(h)
    h = ACTIVATIONS[self.act](h)
    h = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)
    return x + h


class Encoder(nn.Module):
  """A stack of `layers` EncoderLayers named layers_0, layers_1, ..."""
  layers: int
  heads: int
  mlp_dim: int
  act: str
  ln_eps: float
  causal: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      x = EncoderLayer(self.heads, self.mlp_dim, self.act, self.ln_eps, self.causal, self.dtype,
                       self.param_dtype, name=f"layers_{i}")(x)
    return x


class TextTransformer(nn.Module):
  """Token ids (B, L), L <= context_length -> final-LN hidden states (B, L, W) float32."""
  config: TextConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    x = nn.Embed(c.vocab_size, c.width, dtype=jnp.float32, param_dtype=self.param_dtype,
                 name="token_embedding")(ids)
    pos = self.param("position_embedding", nn.initializers.normal(0.01),
                     (c.context_length, c.width), self.param_dtype)
    x = x + pos[:ids.shape[1]].astype(jnp.float32)
    x = Encoder(c.layers, c.heads, c.mlp_dim, c.act, c.ln_eps, True, self.dtype, self.param_dtype,
                name="encoder")(x)
    return _layer_norm(c.ln_eps, self.param_dtype, "final_layer_norm")(x)


class VisionTransformer(nn.Module):
  """Pixels (B, S, S, 3) -> (hidden states (B, 1 + (S/p)^2, W) before the post-LN,
  post-LN class token (B, W)), both float32."""
  config: VisionConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    p = c.patch_size
    x = nn.Conv(c.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding")(pixels)
    x = x.reshape(x.shape[0], -1, c.width).astype(jnp.float32)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.width,), self.param_dtype)
    pos = self.param("position_embedding", nn.initializers.normal(0.02),
                     ((c.image_size // p) ** 2 + 1, c.width), self.param_dtype)
    cls = jnp.broadcast_to(cls.astype(jnp.float32), (x.shape[0], 1, c.width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(jnp.float32)
    x = _layer_norm(c.ln_eps, self.param_dtype, "pre_layernorm")(x)
    x = Encoder(c.layers, c.heads, c.mlp_dim, c.act, c.ln_eps, False, self.dtype, self.param_dtype,
                name="encoder")(x)
    pooled = _layer_norm(c.ln_eps, self.param_dtype, "post_layernorm")(x[:, 0])
    return x, pooled


class CLIP(nn.Module):
  """CLIP text (and, unless `config.vision` is None, image) encoders.

  `__call__(ids, pixels=None)` returns (text embeddings, image embeddings or None) and is what
  `init` traces; use the methods below for inference.
  """
  config: ClipConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    dense = lambda name: nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name=name)
    self.text_model = TextTransformer(c.text, self.dtype, self.param_dtype)
    self.text_projection = dense("text_projection")
    if c.vision is not None:
      self.vision_model = VisionTransformer(c.vision, self.dtype, self.param_dtype)
      self.visual_projection = dense("visual_projection")

  def __call__(self, ids, pixels=None):
    image = None if pixels is None else self.encode_image(pixels)
    return self.encode_text(ids), image

  def text_hidden_states(self, ids):
    """Token ids (B, L) int, L <= context_length -> final-LN states (B, L, W_text) float32."""
    c = self.config.text
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"token ids must be a (batch, length) integer array, got {ids.dtype} "
                       f"{ids.shape}")
    if ids.shape[1] > c.context_length:
      raise ValueError(f"{ids.shape[1]} tokens exceed the context length {c.context_length}")
    return self.text_model(ids)

  def encode_text(self, ids):
    """Token ids (B, L) int -> unnormalised text embeddings (B, projection_dim) float32."""
    c = self.config.text
    hidden = self.text_hidden_states(ids)
    if c.pool == "argmax":
      index = jnp.argmax(ids, axis=-1)
    else:
      index = jnp.argmax(ids == c.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
    return self.text_projection(pooled).astype(jnp.float32)

  def _vision(self, pixels):
    c = self.config.vision
    if c is None:
      raise ValueError("this CLIP model has no vision tower (it was converted text-only)")
    shape = (c.image_size, c.image_size, 3)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != shape:
      raise ValueError(f"images must be (batch, {c.image_size}, {c.image_size}, 3) NHWC pixels "
                       f"normalised with CLIP_MEAN/CLIP_STD (see preprocess_images), got "
                       f"{tuple(pixels.shape)}")
    return self.vision_model(pixels)

  def image_hidden_states(self, pixels):
    """Normalised pixels (B, S, S, 3) -> states (B, 1 + (S/patch)^2, W_vision) float32: the
    class token then the patches in row-major order, before the post-LN."""
    return self._vision(pixels)[0]

  def encode_image(self, pixels):
    """Normalised pixels (B, S, S, 3) -> unnormalised image embeddings (B, projection_dim) f32."""
    pooled = self._vision(pixels)[1]
    return self.visual_projection(pooled).astype(jnp.float32)


def as_float_images(images) -> jax.Array:
  """(B, H, W, 3) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]; other shapes raise."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (batch, height, width, 3) NHWC, got {images.shape}")
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def preprocess_images(images, size: int):
  """Images (B, H, W, 3), uint8 in [0, 255] or float in [0, 1] -> CLIP input (B, size, size, 3).

  Resizes the shorter side to `size` (bicubic, antialiased when shrinking), center-crops to a
  square, and normalises with CLIP_MEAN/CLIP_STD, as CLIP's own preprocessing does (which
  resizes a uint8 PIL image, so results differ from it by about one grey level).
  """
  images = as_float_images(images)
  b, h, w, _ = images.shape
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  images = jax.image.resize(images.astype(jnp.float32), (b, new_h, new_w, 3), "bicubic")
  top, left = (new_h - size) // 2, (new_w - size) // 2
  images = jnp.clip(images[:, top:top + size, left:left + size], 0.0, 1.0)
  return (images - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(config: ClipConfig, rng: jax.Array, param_dtype: Any = jnp.float32):
  """Randomly initialised parameters of `CLIP(config)` (compiled once per config)."""
  return CLIP(config, param_dtype=param_dtype).init(rng, *example_inputs(config))["params"]


def example_inputs(config: ClipConfig) -> tuple:
  """The arguments of one call: a (1, context) zero token row and, with a vision tower, a
  (1, size, size, 3) zero image."""
  ids = jnp.zeros((1, config.text.context_length), jnp.int32)
  if config.vision is None:
    return ids, None
  size = config.vision.image_size
  return ids, jnp.zeros((1, size, size, 3), jnp.float32)
