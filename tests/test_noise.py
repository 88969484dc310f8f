"""The noise schedule, token noising and the timestep embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from paella_jax.noise import add_noise, noise_level, timestep_embedding


def test_noise_level_endpoints_and_fixture(reference_dir):
  io = np.load(reference_dir / "paella_v1_tiny_io.npz")
  np.testing.assert_array_equal(noise_level(jnp.asarray(io["r"])), io["noise_level"])
  np.testing.assert_allclose(noise_level(jnp.array([0.0, 0.5, 1.0])), [1, math.sqrt(0.5), 0],
                             atol=1e-7)


def test_add_noise_replaces_tokens_at_the_scheduled_rate():
  tokens = jnp.zeros((4, 64, 64), jnp.int32)
  r = jnp.array([0.0, 1 / 3, 2 / 3, 1.0])
  noise_tokens = jnp.full_like(tokens, 7)
  noised, replaced = add_noise(jax.random.key(0), tokens, r, 8192, noise_tokens)
  rate = np.asarray(replaced.mean(axis=(1, 2)))
  np.testing.assert_allclose(rate, np.cos(np.pi * np.asarray(r) / 2), atol=0.02)
  np.testing.assert_array_equal(noised, jnp.where(replaced, 7, 0))
  noised, replaced = add_noise(jax.random.key(1), tokens + 5000, jnp.zeros(4), 8192)
  assert bool(replaced.all())
  values = np.asarray(noised)
  assert values.min() >= 0 and values.max() < 8192 and len(np.unique(values)) > 6900  # 16384 uniform draws: ~7083 distinct


def torch_embedding(r, c_r):
  level = torch.cos(torch.tensor(r) * torch.pi / 2) * 10000
  half = c_r // 2
  freqs = torch.arange(half).float().mul(-math.log(10000) / (half - 1)).exp()
  args = level[:, None] * freqs[None]
  emb = torch.cat([args.sin(), args.cos()], 1)
  return torch.nn.functional.pad(emb, (0, 1)).numpy() if c_r % 2 else emb.numpy()


def test_timestep_embedding_matches_pytorch():
  r = np.linspace(0, 1, 11, dtype=np.float32)
  for c_r in (16, 33, 64, 256):
    emb = timestep_embedding(jnp.asarray(r), c_r)
    assert emb.shape == (11, c_r)
    np.testing.assert_allclose(emb, torch_embedding(r, c_r), atol=2e-3, rtol=0)
  # At c_r = 64 (the paper's) the frequency table equals PyTorch's, so errors are tiny.
  np.testing.assert_allclose(timestep_embedding(jnp.asarray(r), 64), torch_embedding(r, 64),
                             atol=2e-5, rtol=0)
