"""The Paella sampler: one jit-compiled `lax.fori_loop` over the denoising steps.

Each step predicts logits for every token (with classifier-free guidance as one batched forward),
applies locally typical filtering, draws every token at a scheduled temperature (a two-stage
Gumbel-max), keeps the tokens outside the mask, and renoises towards the next timestep. All of the paper's
editing modes are arguments of this one sampler: `init_tokens`, `mask`, `start_step`, spatial
conditioning (see `paella_jax.editing`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.noise import add_noise

RENOISE_MODES = ("start", "prev", "rand")
# Raised whenever the same key, settings and weights give other codes (sidecars record it, and
# `sample.py replay` refuses a sidecar of another version). 2: the two-stage draw.
SAMPLER_VERSION = 2
_BISECTION_STEPS = 31  # bit patterns of non-negative float32 (+inf included) span [0, 2**31)
# Logits per block on CPUs: score and probability blocks of 128 KiB each stay in L2 cache.
_CPU_BLOCK_ELEMENTS = 32768


def _typical_threshold(score: jax.Array, probs: jax.Array, mass: jax.Array) -> jax.Array:
  """t* = min{t among the scores : sum of probs with score <= t >= mass}, per row: (..., 1).

  Found without sorting, by bisection over the bit patterns of the non-negative float32 scores
  (which order like the scores). Each of the 31 rounds is one fused compare-and-sum pass. When
  no score reaches the mass (rounding with a mass near 1) the largest score is returned, so
  nothing is removed.
  """
  bits = jax.lax.bitcast_convert_type(score, jnp.int32)
  lo = jnp.full(score.shape[:-1] + (1,), -1, jnp.int32)    # F(lo) < mass
  hi = jnp.max(bits, axis=-1, keepdims=True)               # the answer is <= hi

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    reached = jnp.sum(jnp.where(bits <= mid, probs, 0.0), axis=-1, keepdims=True) >= mass
    done = hi - lo <= 1
    return (jnp.where(done | reached, lo, mid), jnp.where(done | ~reached, hi, mid))

  _, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
  return jax.lax.bitcast_convert_type(hi, jnp.float32)


def typical_scores(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(score, p) of typical filtering, both (..., V): score = |-log p - H(p)|, p = softmax."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  # nansum: codes with p = 0 (logit -inf) contribute nothing to the entropy.
  entropy = -jnp.sum(jnp.where(probs > 0, log_probs * probs, 0.0), axis=-1, keepdims=True)
  return jnp.abs(-log_probs - entropy), probs


def _typical_filter_rows(logits: jax.Array, mass: jax.Array, min_tokens: int) -> jax.Array:
  """`typical_filter` on (..., V) float32 logits, every row at once."""
  score, probs = typical_scores(logits)
  remove = score > _typical_threshold(score, probs, mass)
  if min_tokens > 1:
    # lax.top_k breaks ties towards the lower index, like a stable ascending sort.
    _, keep = jax.lax.top_k(-score, min_tokens)
    kept = jnp.any(keep[..., :, None] == jnp.arange(logits.shape[-1]), axis=-2)
    remove = remove & ~kept
  return jnp.where(remove, -jnp.inf, logits)


def typical_filter(logits: jax.Array, mass: float | jax.Array = 0.2,
                   min_tokens: int = 1) -> jax.Array:
  """Locally typical filtering of the original Paella sampler, without its full sort.

  For each row of codes: score = |-log p - H(p)|. In ascending score order (ties by code index,
  as a stable sort), k = number of leading codes whose cumulative probability stays below
  `mass`; codes scoring above the k-th score are removed (logit -> -inf); the `min_tokens`
  lowest-scoring codes are never removed.

  On CPUs the rows are filtered in blocks of about `_CPU_BLOCK_ELEMENTS` logits (`lax.map`), so
  that the 31 bisection passes read a block that stays in cache; elsewhere all rows go at once.
  Both give the same bits: every operation acts within one row.

  Args:
    logits: (..., V) float logits.
    mass: typical mass in (0, 1] (a Python float or a traced scalar).
    min_tokens: number of codes always kept (static, >= 1).
  Returns:
    (..., V) logits with removed codes set to -inf.
  """
  if isinstance(mass, (int, float)) and not 0.0 < mass <= 1.0:
    raise ValueError(f"typical mass must lie in (0, 1], got {mass}")
  if min_tokens < 1:
    raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
  logits = logits.astype(jnp.float32)
  mass = jnp.asarray(mass, jnp.float32)
  codes = logits.shape[-1]

  def in_blocks(logits):
    rows = logits.reshape(-1, codes)
    block = max(1, _CPU_BLOCK_ELEMENTS // codes)
    filtered = jax.lax.map(lambda row: _typical_filter_rows(row, mass, min_tokens), rows,
                           batch_size=min(block, max(rows.shape[0], 1)))
    return filtered.reshape(logits.shape)

  return jax.lax.platform_dependent(
      logits, cpu=in_blocks, default=lambda logits: _typical_filter_rows(logits, mass, min_tokens))


def draw_codes(rng: jax.Array, logits: jax.Array) -> jax.Array:
  """One code per row drawn from softmax(logits), in two stages: (..., V) -> (..., ) int32.

  The V codes are split into groups of G (about sqrt(V), a power of two; V padded with -inf to
  a multiple of G). A group is drawn by Gumbel-max over the groups' log-sum-exps, then a code
  within it by Gumbel-max over its G logits: P(group) * P(code | group) = softmax(logits), as
  with one Gumbel-max over all V codes, but with V / G + G random numbers per row instead of
  V (192 instead of 8192 for the v1 codebook), which dominated the draw. Rows must hold at least
  one finite logit (the typical filter always keeps one).
  """
  codes = logits.shape[-1]
  group = 1 << max(0, round(math.log2(math.sqrt(codes))))
  pad = (-codes) % group
  if pad:
    logits = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, pad)],
                     constant_values=-jnp.inf)
  grouped = logits.reshape(*logits.shape[:-1], -1, group)
  group_rng, code_rng = jax.random.split(rng)
  which = jax.random.categorical(group_rng, jax.nn.logsumexp(grouped, axis=-1), axis=-1)
  within = jnp.take_along_axis(grouped, which[..., None, None], axis=-2)[..., 0, :]
  return (which * group + jax.random.categorical(code_rng, within, axis=-1)).astype(jnp.int32)


def guided_logits(model, params, x: jax.Array, clip: jax.Array, r: jax.Array,
                  cfg: jax.Array | None) -> jax.Array:
  """Logits (B, h, w, V); with `cfg`, uncond + cfg * (cond - uncond) from ONE batched forward.

  The unconditional half uses zero conditioning, as the original does.
  """
  if cfg is None:
    return model.apply({"params": params}, x, clip, r)
  return _guided(model, params, x, _with_zero_conditioning(clip), r, cfg)


def _with_zero_conditioning(clip: jax.Array) -> jax.Array:
  """(B, ...) -> (2B, ...): the conditioning, then zeros (the unconditional half)."""
  return jnp.concatenate([clip, jnp.zeros_like(clip)])


def _guided(model, params, x: jax.Array, clip_pair: jax.Array, r: jax.Array,
            cfg: jax.Array) -> jax.Array:
  """`guided_logits` given clip_pair = `_with_zero_conditioning(clip)`."""
  both = model.apply({"params": params}, jnp.concatenate([x, x]), clip_pair,
                     jnp.concatenate([r, r]))
  cond, uncond = jnp.split(both, 2)
  return uncond + cfg * (cond - uncond)


@partial(jax.jit, static_argnames=("model", "steps", "renoise_mode", "typical_min_tokens",
                                   "use_cfg", "use_typical"))
def _sample_loop(model, params, clip, rng, init_tokens, init_noise_mask, mask, start_step,
                 cfg, typical_mass, temperatures, renoise_steps, *, steps, renoise_mode,
                 typical_min_tokens, use_cfg, use_typical):
  """The jit-compiled sampling loop; see `sample` for the arguments."""
  batch = init_tokens.shape[0]
  noise_rng, rng = jax.random.split(rng)
  noise = jax.random.randint(noise_rng, init_tokens.shape, 0, model.num_labels, jnp.int32)
  init_x = jnp.where(init_noise_mask, noise, init_tokens)
  regenerate = mask.astype(bool)
  clip_pair = _with_zero_conditioning(clip) if use_cfg else None  # built once, not per step

  def step(i, x):
    step_rng = jax.random.fold_in(rng, i)
    sample_rng, renoise_rng = jax.random.split(step_rng)
    r = jnp.full((batch,), i / steps, jnp.float32)
    if use_cfg:
      logits = _guided(model, params, x, clip_pair, r, cfg)
    else:
      logits = model.apply({"params": params}, x, clip, r)
    if use_typical:
      logits = typical_filter(logits, typical_mass, typical_min_tokens)
    new_x = draw_codes(sample_rng, logits / temperatures[i])
    new_x = jnp.where(regenerate, new_x, init_x)
    noise_source = {"start": init_x, "prev": x, "rand": None}[renoise_mode]
    r_next = jnp.full((batch,), (i + 1) / steps, jnp.float32)
    renoised, _ = add_noise(renoise_rng, new_x, r_next, model.num_labels, noise_source)
    return jnp.where(i < renoise_steps, renoised, new_x)

  return jax.lax.fori_loop(start_step, steps, step, init_x)


def _as_token_array(tokens, name: str, shape: tuple[int, ...], num_labels: int) -> jax.Array:
  tokens = np.asarray(tokens)
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{name} must hold integer codes, got dtype {tokens.dtype}")
  if tokens.shape != shape:
    raise ValueError(f"{name} has shape {tokens.shape}, expected {shape}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= num_labels):
    raise ValueError(f"{name} codes must lie in [0, {num_labels}), got [{tokens.min()}, "
                     f"{tokens.max()}]")
  return jnp.asarray(tokens, jnp.int32)


def _as_mask(mask, shape: tuple[int, ...]) -> jax.Array:
  mask = np.asarray(mask)
  if mask.shape != shape:
    raise ValueError(f"mask has shape {mask.shape}, expected {shape} (batch, h, w) of the latent")
  if not np.isin(np.unique(mask), (0, 1)).all():
    raise ValueError("mask must hold only 0 (keep) and 1 (regenerate)")
  return jnp.asarray(mask, bool)


def sample(model, params, clip, rng, steps: int = 8, cfg: float | None = 5.0,
           typical_mass: float | None = 0.2, typical_min_tokens: int = 1,
           temperature: Sequence[float] = (1.0, 1.0), latent_shape: Sequence[int] = (32, 32),
           renoise_mode: str = "start", renoise_steps: int | None = None,
           init_tokens=None, mask=None, start_step: int = 0) -> jax.Array:
  """Samples token maps with the Paella v1 sampler. Returns (B, h, w) int32 codes.

  Args:
    model, params: a `DenoiseUNet` and its params.
    clip: (B, c_clip) pooled or (B, h', w', c_clip) spatial conditioning.
    rng: PRNG key; the same key and settings give the same tokens.
    steps: T, number of steps; step i runs at r = i / T.
    cfg: classifier-free guidance weight w (uncond + w (cond - uncond)); None disables it.
    typical_mass, typical_min_tokens: locally typical filtering; typical_mass None disables it.
    temperature: (start, end) of the linear Gumbel temperature schedule over the T steps.
    latent_shape: (h, w) when `init_tokens` is None.
    renoise_mode: after each step but the last `T - renoise_steps`, tokens revert with
      probability cos(pi r_{i+1} / 2) to the initial noise ('start'), to the step's input
      ('prev') or to fresh random codes ('rand').
    renoise_steps: number of steps followed by renoising (default T - 1).
    init_tokens: (B, h, w) codes to start from. With `mask`, the masked tokens start as noise;
      without it, sampling starts from these tokens as they are (structural editing: pass
      already-noised tokens and a `start_step`).
    mask: (B, h, w) 1 = regenerate, 0 = keep `init_tokens` (inpainting, outpainting).
    start_step: first step to run (0 <= start_step <= T); T returns the start tokens.
  """
  if renoise_mode not in RENOISE_MODES:
    raise ValueError(f"renoise_mode must be one of {RENOISE_MODES}, got {renoise_mode!r}")
  if not 0 <= start_step <= steps:
    raise ValueError(f"start_step must lie in [0, {steps}], got {start_step}")
  clip = jnp.asarray(clip, jnp.float32)
  if clip.ndim not in (2, 4) or clip.shape[-1] != model.c_clip:
    raise ValueError(f"clip must be (B, {model.c_clip}) or (B, h', w', {model.c_clip}), "
                     f"got {clip.shape}")
  batch = clip.shape[0]
  if init_tokens is None:
    if mask is not None:
      raise ValueError("a mask needs init_tokens: the tokens to keep where mask == 0")
    shape = (batch, *latent_shape)
    init_tokens = jnp.zeros(shape, jnp.int32)
    init_noise_mask = mask = jnp.ones(shape, bool)
  else:
    shape = tuple(np.shape(init_tokens))
    if len(shape) != 3 or shape[0] != batch:
      raise ValueError(f"init_tokens must be (B={batch}, h, w), got {shape}")
    init_tokens = _as_token_array(init_tokens, "init_tokens", shape, model.num_labels)
    if mask is None:
      init_noise_mask, mask = jnp.zeros(shape, bool), jnp.ones(shape, bool)
    else:
      init_noise_mask = mask = _as_mask(mask, shape)
  factor = 2 ** (len(model.down_levels) - 1)
  if shape[1] % factor or shape[2] % factor:
    raise ValueError(f"latent size {shape[1:]} must be divisible by {factor}")
  temperatures = jnp.maximum(  # a temperature of 0 means the argmax
      jnp.linspace(temperature[0], temperature[1], steps, dtype=jnp.float32), 1e-10)
  return _sample_loop(
      model, params, clip, rng, init_tokens, init_noise_mask, mask,
      jnp.asarray(start_step, jnp.int32), jnp.asarray(cfg if cfg is not None else 0.0, jnp.float32),
      jnp.asarray(typical_mass if typical_mass is not None else 1.0, jnp.float32), temperatures,
      jnp.asarray(steps - 1 if renoise_steps is None else renoise_steps, jnp.int32),
      steps=steps, renoise_mode=renoise_mode, typical_min_tokens=typical_min_tokens,
      use_cfg=cfg is not None, use_typical=typical_mass is not None)
