"""Frechet Inception Distance: streaming feature statistics and a stable Frechet distance.

    features = inception_features(*load_inception("ckpts/inception_fid"), batch_size=200)
    stats = GaussianStats(2048)
    for images in batches:                       # (B, H, W, 3) in [0, 1]
      stats.update(features(images))
    fid = frechet_distance(*stats.mean_cov(), *reference)

Statistics are accumulated in float64 (sum and sum of outer products), so 30k images never sit in
memory. `save_stats`/`load_stats` use pytorch-fid's `.npz` layout (`mu`, `sigma`), so its
precomputed reference statistics can be used as they are.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
from scipy import linalg

from paella_jax.models.inception import FEATURES
from paella_jax.sharding import data_parallel


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) of two Gaussians.

  The square root is scipy's `sqrtm` of the product, as pytorch-fid computes it; when the product
  is (near-)singular and the root is not finite, `eps` is added to both diagonals. A small
  imaginary part from rounding is dropped; a large one raises ValueError.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"statistics do not match: means {mu1.shape} vs {mu2.shape}, "
                     f"covariances {sigma1.shape} vs {sigma2.shape}")
  with warnings.catch_warnings():      # a singular product is handled below
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(len(mu1)) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"matrix square root has an imaginary component of "
                       f"{np.max(np.abs(covmean.imag)):.3g}")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class GaussianStats:
  """Running mean and covariance of (N, dim) features, in float64."""

  def __init__(self, dim: int = FEATURES):
    self.n, self.sum, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

  def update(self, features) -> None:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != len(self.sum):
      raise ValueError(f"features must be (N, {len(self.sum)}), got {features.shape}")
    self.n += len(features)
    self.sum += features.sum(0)
    self.outer += features.T @ features

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu (dim,), sigma (dim, dim)): the sample mean and unbiased covariance (np.cov's)."""
    if self.n < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
    mu = self.sum / self.n
    return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> str:
  """Writes pytorch-fid's `.npz` layout (mu, sigma) plus any scalar/string metadata."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mu=mu, sigma=sigma, **meta)
  os.replace(tmp, path)
  return path


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an `.npz` with those keys (ours or pytorch-fid's)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FID statistics not found: {path}")
  with np.load(path) as f:
    if "mu" not in f or "sigma" not in f:
      raise ValueError(f"{path} has no 'mu' and 'sigma' arrays: not FID statistics")
    return f["mu"], f["sigma"]


def inception_features(module, params: Any, batch_size: int = 200):
  """A function images (N, H, W, 3) in [0, 1] -> pool features (N, 2048) float32 numpy:
  jit-compiled, data-parallel over the local devices, in chunks of `batch_size` (the last one
  padded, so any N compiles once per image size)."""
  apply = data_parallel(lambda p, x: module.apply({"params": p}, x), chunk_size=batch_size)

  def features(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if not len(images):
      return np.zeros((0, FEATURES), np.float32)
    return apply(params, images)
  return features
