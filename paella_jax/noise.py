"""The noise processes of Paella: token noising, the schedules and the timestep embeddings.

v1: a timestep r in [0, 1] has noise level cos(pi * r / 2), the probability that a token is
replaced by a random code (r = 0 is pure noise, r = 1 is clean).
v3: r is the noise level itself (linear: r = 1 is pure noise), drawn in training as
clamp(1 - U + 0.001, 0.001, 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_POSITIONS = 10_000


def noise_level(r: jax.Array) -> jax.Array:
  """cos(pi * r / 2): the token replacement probability at timestep r (any shape, in [0, 1])."""
  return jnp.cos(r * jnp.pi / 2)


V3_MIN_NOISE = 0.001


def sample_v3_noise_level(rng: jax.Array, batch: int) -> jax.Array:
  """v3's training noise levels: clamp(1 - U + 0.001, 0.001, 1) with U ~ U[0, 1): (batch,)."""
  u = jax.random.uniform(rng, (batch,))
  return jnp.clip(1.0 - u + V3_MIN_NOISE, V3_MIN_NOISE, 1.0)


def add_noise(rng: jax.Array, tokens: jax.Array, r: jax.Array, num_labels: int,
              noise_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """v1: replaces each token independently with probability noise_level(r).

  Args:
    rng: PRNG key.
    tokens: int (B, h, w) codes in [0, num_labels).
    r: (B,) timesteps in [0, 1].
    num_labels: codebook size, the range of the uniform random replacement codes.
    noise_tokens: optional int (B, h, w) replacement codes (e.g. the sampler's initial noise);
      uniform random codes when None.
  Returns:
    (noised tokens (B, h, w) with the dtype of `tokens`, replaced (B, h, w) bool).
  """
  return replace_tokens(rng, tokens, noise_level(r), num_labels, noise_tokens)


def replace_tokens(rng: jax.Array, tokens: jax.Array, prob: jax.Array, num_labels: int,
                   noise_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Replaces each token independently with probability prob (B,) (v3: prob = r, linear);
  arguments and results as `add_noise`."""
  mask_rng, code_rng = jax.random.split(rng)
  prob = prob.reshape((-1,) + (1,) * (tokens.ndim - 1))
  replaced = jax.random.uniform(mask_rng, tokens.shape) < prob
  if noise_tokens is None:
    noise_tokens = jax.random.randint(code_rng, tokens.shape, 0, num_labels, dtype=tokens.dtype)
  return jnp.where(replaced, noise_tokens.astype(tokens.dtype), tokens), replaced


def _frequencies(half_dim: int) -> np.ndarray:
  """exp(-k ln(1e4) / (half_dim - 1)) for k < half_dim as a float32 table.

  The exponent is formed in float32 (as the original does), the exponential taken in float64
  and rounded to float32: this stays within one ulp of PyTorch's table, whereas XLA's float32
  exp is off by one ulp on many entries, which moves logits by ~1e-4 at the large arguments
  (up to 1e4) of this embedding.
  """
  exponent = np.arange(half_dim, dtype=np.float32) * np.float32(-math.log(MAX_POSITIONS) / (half_dim - 1))
  return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_embedding(r: jax.Array, c_r: int) -> jax.Array:
  """v1: sinusoidal embedding of 1e4 * cos(pi r / 2) (the noise level): (B,) -> (B, c_r) float32."""
  return sinusoidal_embedding(noise_level(r.astype(jnp.float32)), c_r)


def sinusoidal_embedding(level: jax.Array, c_r: int) -> jax.Array:
  """Sinusoidal embedding of 1e4 * level: (B,) -> (B, c_r) float32 (v3 embeds its r this way).

  Layout [sin | cos] over c_r // 2 frequencies, with one zero column appended when c_r is odd.
  """
  half_dim = c_r // 2
  if half_dim < 2:
    raise ValueError(f"c_r must be at least 4, got {c_r}")
  args = (level.astype(jnp.float32) * MAX_POSITIONS)[:, None] * _frequencies(half_dim)[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if c_r % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb
