"""The FID Inception v3 (TensorFlow's 2015-12-05 graph, as pytorch-fid ports it), in linen, NHWC.

This is the network every published FID is computed with: torchvision's `Inception3` layout with
pytorch-fid's patches for the TF graph's quirks:
  - the pool branches of Mixed_5b..5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1) are 3x3 average
    pools that do not count the zero padding (`count_include_pad=False`);
  - Mixed_7c's (E_2) pool branch is a 3x3 *max* pool;
  - inputs in [0, 1] are resized to 299x299 (bilinear, half-pixel centres, no antialiasing:
    PyTorch's `interpolate(mode="bilinear", align_corners=False)`) and scaled to [-1, 1].
Each BasicConv2d (conv without bias, BatchNorm eps 1e-3, ReLU) is one biased conv + ReLU here:
the converter folds the BatchNorm's running statistics into the kernel and bias. Convolutions run
at `Precision.HIGHEST`, so TPUs and GPUs (TF32) compute them in float32 like the reference.

Output: the 2048-d pool features (global average over the last 8x8 map), the FID's activations.
The smallest input that survives the strided layers is 75x75 (with `resize_to=None`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURES = 2048
MIN_SIZE = 75


def conv(x, features: int, kernel: int | Sequence[int], name: str, stride: int = 1,
         padding: int | Sequence[int] = 0):
  """BasicConv2d with its BatchNorm folded in: conv (bias) + ReLU. `padding` per (h, w)."""
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  y = nn.Conv(features, kernel, strides=(stride, stride), padding=[(p, p) for p in padding],
              precision=jax.lax.Precision.HIGHEST, name=name)(x)
  return nn.relu(y)


def avg_pool_3x3(x):
  """TF's 3x3 stride-1 'SAME' average pool: the padding is not counted."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride: int = 1):
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = conv(x, 64, 1, "branch1x1")
    b5 = conv(conv(x, 48, 1, "branch5x5_1"), 64, 5, "branch5x5_2", padding=2)
    b3 = conv(x, 64, 1, "branch3x3dbl_1")
    b3 = conv(conv(b3, 96, 3, "branch3x3dbl_2", padding=1), 96, 3, "branch3x3dbl_3", padding=1)
    bp = conv(avg_pool_3x3(x), self.pool_features, 1, "branch_pool")
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = conv(x, 384, 3, "branch3x3", stride=2)
    bd = conv(x, 64, 1, "branch3x3dbl_1")
    bd = conv(conv(bd, 96, 3, "branch3x3dbl_2", padding=1), 96, 3, "branch3x3dbl_3", stride=2)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = conv(x, 192, 1, "branch1x1")
    b7 = conv(x, c, 1, "branch7x7_1")
    b7 = conv(b7, c, (1, 7), "branch7x7_2", padding=(0, 3))
    b7 = conv(b7, 192, (7, 1), "branch7x7_3", padding=(3, 0))
    bd = conv(x, c, 1, "branch7x7dbl_1")
    bd = conv(bd, c, (7, 1), "branch7x7dbl_2", padding=(3, 0))
    bd = conv(bd, c, (1, 7), "branch7x7dbl_3", padding=(0, 3))
    bd = conv(bd, c, (7, 1), "branch7x7dbl_4", padding=(3, 0))
    bd = conv(bd, 192, (1, 7), "branch7x7dbl_5", padding=(0, 3))
    bp = conv(avg_pool_3x3(x), 192, 1, "branch_pool")
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = conv(conv(x, 192, 1, "branch3x3_1"), 320, 3, "branch3x3_2", stride=2)
    b7 = conv(x, 192, 1, "branch7x7x3_1")
    b7 = conv(b7, 192, (1, 7), "branch7x7x3_2", padding=(0, 3))
    b7 = conv(b7, 192, (7, 1), "branch7x7x3_3", padding=(3, 0))
    b7 = conv(b7, 192, 3, "branch7x7x3_4", stride=2)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`max_pool=False`, pytorch-fid's FIDInceptionE_1) and Mixed_7c (E_2)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = conv(x, 320, 1, "branch1x1")
    b3 = conv(x, 384, 1, "branch3x3_1")
    b3 = jnp.concatenate([conv(b3, 384, (1, 3), "branch3x3_2a", padding=(0, 1)),
                          conv(b3, 384, (3, 1), "branch3x3_2b", padding=(1, 0))], axis=-1)
    bd = conv(conv(x, 448, 1, "branch3x3dbl_1"), 384, 3, "branch3x3dbl_2", padding=1)
    bd = jnp.concatenate([conv(bd, 384, (1, 3), "branch3x3dbl_3a", padding=(0, 1)),
                          conv(bd, 384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))], axis=-1)
    pooled = max_pool_3x3(x) if self.max_pool else avg_pool_3x3(x)
    bp = conv(pooled, 192, 1, "branch_pool")
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images, size: int):
  """(B, H, W, C) -> (B, size, size, C) like PyTorch's bilinear `interpolate` with
  `align_corners=False` (half-pixel centres, edge clamping, no antialiasing)."""
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), "bilinear", antialias=False)


class InceptionV3(nn.Module):
  """FID Inception v3: images (B, H, W, 3) float in [0, 1] -> pool features (B, 2048) float32.

  `resize_to`: the square size inputs are resized to (299, as every published FID); None feeds
  the images as they are (at least 75x75).
  """
  resize_to: int | None = 299

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (batch, height, width, 3) in [0, 1], got {images.shape}")
    x = jnp.asarray(images, jnp.float32)
    if self.resize_to is not None:
      x = resize_bilinear(x, self.resize_to)
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"Inception needs inputs of at least {MIN_SIZE}x{MIN_SIZE}, "
                       f"got {x.shape[1:3]}")
    x = 2.0 * x - 1.0
    x = conv(x, 32, 3, "Conv2d_1a_3x3", stride=2)
    x = conv(x, 32, 3, "Conv2d_2a_3x3")
    x = conv(x, 64, 3, "Conv2d_2b_3x3", padding=1)
    x = max_pool_3x3(x, stride=2)
    x = conv(x, 80, 1, "Conv2d_3b_1x1")
    x = conv(x, 192, 3, "Conv2d_4a_3x3")
    x = max_pool_3x3(x, stride=2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))
