"""CLIP score: 100 x the cosine similarity of an image's and its caption's CLIP embeddings.

As torchmetrics' `CLIPScore` (and the text-to-image papers that report it): per pair
`max(100 * cos(E_img, E_txt), 0)`, averaged over the pairs. The CLIP is a full model (text and
vision towers), e.g. OpenAI's ViT-L/14 converted with `python -m paella_jax.convert clip`;
images go through CLIP's own preprocessing (`models.clip.preprocess_images`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from paella_jax.encoders.clip import ClipEncoder
from paella_jax.models.clip import preprocess_images


class ClipScorer:
  """`scorer(images, captions) -> (N,) float64` CLIP scores; `images` (N, H, W, 3) in [0, 1]."""

  def __init__(self, encoder: ClipEncoder):
    vision = encoder.model.config.vision
    if vision is None:
      raise ValueError("the CLIP score needs a CLIP with its vision tower; convert it without "
                       "--text-only")
    self.encoder = encoder
    self._preprocess = jax.jit(lambda x: preprocess_images(x, vision.image_size))

  def __call__(self, images, captions: Sequence[str]) -> np.ndarray:
    if len(images) != len(captions):
      raise ValueError(f"{len(images)} images for {len(captions)} captions")
    image_emb = self.encoder.encode_images(np.asarray(self._preprocess(np.asarray(images))))
    text_emb = self.encoder.encode_text(list(captions))
    return np.maximum(100.0 * cosine(image_emb, text_emb), 0.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of (N, D) arrays, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
