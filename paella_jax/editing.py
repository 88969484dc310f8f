"""The paper's image manipulations, each turned into arguments of the one sampler.

Every function here is small and pure (numpy or jax): it builds `init_tokens`, `mask`,
`start_step` or the conditioning that `paella_jax.sampling.sample` takes. Token maps are
(B, h, w) int codes of the VQGAN; masks are 1 = regenerate, 0 = keep.

  inpainting    init_tokens = encoded image, mask = the region to repaint (cfg 6)
  outpainting   init_tokens = the encoded image pasted on a larger canvas, mask = 1 around it (cfg 4)
  structural    init_tokens = the encoded image noised to r = start/T, start_step, renoise 'prev' (cfg 6)
  variation     conditioning = the CLIP image embedding of the image (a model trained on image
                embeddings)
  interpolation conditioning = lerp/slerp between prompt embeddings (cfg 4)
  multi         conditioning = a spatial map (B, h, w, C) of several prompts over regions
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.noise import add_noise


def latent_mask(pixel_mask: np.ndarray, factor: int) -> np.ndarray:
  """(H, W) pixel mask (any values; > 0.5 = repaint) -> (H/f, W/f) int32 token mask.

  A token is regenerated when any pixel of its f x f patch is masked, so nothing inside the
  painted region keeps old content.
  """
  pixel_mask = np.asarray(pixel_mask, np.float32)
  if pixel_mask.ndim != 2:
    raise ValueError(f"mask must be (H, W), got {pixel_mask.shape}")
  h, w = pixel_mask.shape
  if h % factor or w % factor:
    raise ValueError(f"mask size {h}x{w} is not a multiple of the VQGAN factor {factor}")
  patches = pixel_mask.reshape(h // factor, factor, w // factor, factor) > 0.5
  return patches.any(axis=(1, 3)).astype(np.int32)


def box_mask(height: int, width: int, box: Sequence[int]) -> np.ndarray:
  """(H, W) float mask with 1 inside box = (top, left, bottom, right) in pixels."""
  top, left, bottom, right = box
  if not (0 <= top < bottom <= height and 0 <= left < right <= width):
    raise ValueError(f"box {tuple(box)} does not lie inside the {height}x{width} image")
  mask = np.zeros((height, width), np.float32)
  mask[top:bottom, left:right] = 1.0
  return mask


def outpaint_canvas(codes: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Pastes (B, h, w) codes on a (B, H, W) token canvas at offset (top, left).

  Returns (init_tokens (B, H, W) int32, mask (B, H, W) int32: 1 outside the pasted codes).
  """
  b, h, w = codes.shape
  big_h, big_w = canvas
  top, left = offset
  if big_h < h or big_w < w:
    raise ValueError(f"canvas {big_h}x{big_w} tokens is smaller than the image ({h}x{w} tokens)")
  if not (0 <= top <= big_h - h and 0 <= left <= big_w - w):
    raise ValueError(f"offset {offset} puts the {h}x{w} image outside the {big_h}x{big_w} canvas")
  tokens = np.zeros((b, big_h, big_w), np.int32)
  mask = np.ones((b, big_h, big_w), np.int32)
  tokens[:, top:top + h, left:left + w] = codes
  mask[:, top:top + h, left:left + w] = 0
  return tokens, mask


def noise_for_edit(rng: jax.Array, codes: jax.Array, start_step: int, steps: int,
                   num_labels: int) -> jax.Array:
  """Structural editing's start: codes noised to the level of step `start_step` of `steps`
  (each token replaced by a random code with probability cos(pi r / 2), r = start/steps)."""
  r = jnp.full((codes.shape[0],), start_step / steps, jnp.float32)
  noised, _ = add_noise(rng, jnp.asarray(codes, jnp.int32), r, num_labels)
  return noised


def interpolate(a: np.ndarray, b: np.ndarray, weights: np.ndarray, mode: str = "lerp"
                ) -> np.ndarray:
  """Embeddings between a and b (each (C,)) at `weights` (n,) in [0, 1] -> (n, C).

  "lerp" is linear; "slerp" moves along the great circle between the directions and linearly
  in norm. Weight 0 gives a and weight 1 gives b exactly.
  """
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  t = np.asarray(weights, np.float32)[:, None]
  if mode == "lerp":
    out = (1 - t) * a + t * b
  elif mode == "slerp":
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = np.clip(np.dot(a, b) / max(na * nb, 1e-12), -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
      out = (1 - t) * a + t * b
    else:
      ua, ub = a / na, b / nb
      direction = (np.sin((1 - t) * angle) * ua + np.sin(t * angle) * ub) / np.sin(angle)
      out = direction * ((1 - t) * na + t * nb)
  else:
    raise ValueError(f"interpolation mode must be 'lerp' or 'slerp', got {mode!r}")
  out[t[:, 0] == 0] = a
  out[t[:, 0] == 1] = b
  return out


def interpolation_path(embeddings: np.ndarray, frames: int, mode: str = "lerp") -> np.ndarray:
  """(P, C) prompt embeddings (P >= 2) -> (frames, C) evenly spaced along the path through them."""
  embeddings = np.asarray(embeddings, np.float32)
  if embeddings.ndim != 2 or len(embeddings) < 2:
    raise ValueError("interpolation needs at least two prompt embeddings")
  if frames < 2:
    raise ValueError("interpolation needs at least 2 frames")
  position = np.linspace(0, len(embeddings) - 1, frames)
  segment = np.minimum(position.astype(int), len(embeddings) - 2)
  out = np.empty((frames, embeddings.shape[1]), np.float32)
  for s in np.unique(segment):
    rows = segment == s
    out[rows] = interpolate(embeddings[s], embeddings[s + 1], position[rows] - s, mode)
  return out


def region_labels(size: tuple[int, int], count: int, layout: str) -> np.ndarray:
  """(h, w) int labels splitting the latent into `count` equal "columns" or "rows"."""
  h, w = size
  if layout == "columns":
    return np.broadcast_to((np.arange(w) * count // w)[None, :], (h, w)).copy()
  if layout == "rows":
    return np.broadcast_to((np.arange(h) * count // h)[:, None], (h, w)).copy()
  raise ValueError(f"layout must be 'columns' or 'rows' (or give a label map), got {layout!r}")


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) int label map to `size`."""
  labels = np.asarray(labels)
  rows = (np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]
  cols = (np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]
  return labels[rows.astype(int)][:, cols.astype(int)]


def conditioning_map(embeddings: np.ndarray, labels: np.ndarray, blend: float = 1.0
                     ) -> np.ndarray:
  """Spatial conditioning (h, w, C) from P prompt embeddings (P, C) and labels (h, w) in [0, P).

  Borders are blended softly: the one-hot region weights are smoothed with a Gaussian of
  standard deviation `blend` tokens (0 = hard borders) and renormalised.
  """
  embeddings = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels)
  if labels.min() < 0 or labels.max() >= len(embeddings):
    raise ValueError(f"label map values must lie in [0, {len(embeddings)}), got "
                     f"[{labels.min()}, {labels.max()}]")
  weights = np.eye(len(embeddings), dtype=np.float32)[labels]         # (h, w, P)
  if blend > 0:
    radius = max(1, int(np.ceil(3 * blend)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blend) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
      padded = np.pad(weights, [(radius, radius) if a == axis else (0, 0) for a in range(3)],
                      mode="edge")
      weights = sum(k * np.take(padded, np.arange(i, i + weights.shape[axis]), axis=axis)
                    for i, k in enumerate(kernel))
    weights /= weights.sum(-1, keepdims=True)
  return weights @ embeddings
