"""The Paella sampler, for both model families: one jit-compiled `lax.fori_loop` over the steps.

Each step predicts logits for every token (with classifier-free guidance as one batched forward),
optionally applies locally typical filtering, draws every token at a scheduled temperature (a
two-stage Gumbel-max), keeps the tokens outside the mask, and renoises towards the next
timestep. What differs between v1 and v3 (conditioning, guidance's unconditional half, the
timestep and renoising schedules, defaults) is a small per-family adapter (`_PaellaV1`,
`_PaellaV3`). All of the paper's editing modes are arguments of this one sampler: `init_tokens`,
`mask`, `start_step`, spatial conditioning (see `paella_jax.editing`).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.models.paella import DenoiseUNet
from paella_jax.models.paella_v3 import PaellaV3
from paella_jax.noise import noise_level, replace_tokens
from paella_jax import families
from paella_jax.sampler_settings import SamplerSettings

# Raised whenever the same key, settings and weights give other codes (sidecars record it, and
# `sample.py replay` refuses a sidecar of another version). 2: the two-stage draw. 3: one key per
# row (the pipeline's), so that a row's codes do not depend on the rows sampled with it.
SAMPLER_VERSION = 3
V3_CONDITIONING = ("byt5", "clip", "clip_image", "byt5_mask")
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
    mass: typical mass in (0, 1]: a Python float, a traced scalar, or an array broadcasting to
      (..., 1) (one mass per row, e.g. (B, 1, 1, 1) for (B, h, w, V) logits).
    min_tokens: number of codes always kept (static, >= 1).
  Returns:
    (..., V) logits with removed codes set to -inf.
  """
  if isinstance(mass, (int, float)) and not 0.0 < mass <= 1.0:
    raise ValueError(f"typical mass must lie in (0, 1], got {mass}")
  if min_tokens < 1:
    raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
  logits = logits.astype(jnp.float32)
  mass = jnp.broadcast_to(jnp.asarray(mass, jnp.float32), logits.shape[:-1] + (1,))
  codes = logits.shape[-1]

  def in_blocks(logits):
    rows = logits.reshape(-1, codes)
    block = max(1, _CPU_BLOCK_ELEMENTS // codes)
    filtered = jax.lax.map(lambda row: _typical_filter_rows(row[0], row[1], min_tokens),
                           (rows, mass.reshape(-1, 1)), batch_size=min(block, max(rows.shape[0], 1)))
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
  """v1 logits (B, h, w, V); with `cfg`, uncond + cfg * (cond - uncond) from ONE batched forward.

  The unconditional half uses zero conditioning, as the original does.
  """
  family = _PaellaV1(model)
  return family.logits(params, x, r, family.prepare((clip, None), cfg is not None), cfg)


def _with_zero_conditioning(clip: jax.Array) -> jax.Array:
  """(B, ...) -> (2B, ...): the conditioning, then zeros (the unconditional half)."""
  return jnp.concatenate([clip, jnp.zeros_like(clip)])


def _guided(forward, x: jax.Array, cond_pair: Any, r: jax.Array, cfg: jax.Array) -> jax.Array:
  """uncond + cfg * (cond - uncond) from one forward(x, cond, r) of the doubled batch;
  `cond_pair` holds the conditional rows, then the unconditional ones."""
  both = forward(jnp.concatenate([x, x]), cond_pair, jnp.concatenate([r, r]))
  cond, uncond = jnp.split(both, 2)
  return uncond + cfg * (cond - uncond)


@dataclasses.dataclass(frozen=True)
class _PaellaV1:
  """v1: conditioning a CLIP array (pooled or spatial), uncond = zeros; step i runs at r = i / T
  (0 = noise) and renoises with probability cos(pi r_{i+1} / 2)."""
  model: DenoiseUNet
  kind = "paella_v1"

  @property
  def latent_factor(self) -> int:
    return 2 ** (len(self.model.down_levels) - 1)

  def timestep(self, i, steps):
    return i / steps

  def renoise_prob(self, r):
    """Probability of renoising a token towards timestep r (B,)."""
    return noise_level(r)

  def check(self, cond, uncond):
    """Host-side: (conditioning as arrays, batch size)."""
    if uncond is not None:
      raise ValueError("Paella v1 guides with zero conditioning: uncond must be None")
    clip = jnp.asarray(cond, jnp.float32)
    if clip.ndim not in (2, 4) or clip.shape[-1] != self.model.c_clip:
      raise ValueError(f"clip must be (B, {self.model.c_clip}) or (B, h', w', "
                       f"{self.model.c_clip}), got {clip.shape}")
    return (clip, None), clip.shape[0]

  def prepare(self, conditioning, guided: bool):
    """The conditioning the step loop uses, built once outside it."""
    clip, _ = conditioning
    return _with_zero_conditioning(clip) if guided else clip

  def logits(self, params, x, r, prepared, cfg):
    forward = lambda x, clip, r: self.model.apply({"params": params}, x, clip, r)
    return forward(x, prepared, r) if cfg is None else _guided(forward, x, prepared, r, cfg)

  def conditional_logits(self, params, x, r, prepared):
    """The conditional logits alone, given the guided `prepared` conditioning."""
    return self.model.apply({"params": params}, x, jnp.split(prepared, 2)[0], r)


@dataclasses.dataclass(frozen=True)
class _PaellaV3:
  """v3: conditioning a dict of ByT5 states, CLIP text and image embeddings (any absent), uncond
  the caller's (the empty prompt's); step i runs at noise level t_i = 1 - i / T and renoises to
  the initial noise with probability t_{i+1} (linear).

  With guidance, both halves go through one batched forward when they have the same entries
  (ByT5 sequences of different lengths are padded and masked); otherwise two forwards."""
  model: PaellaV3
  kind = "paella_v3"

  @property
  def latent_factor(self) -> int:
    return self.model.latent_factor

  def timestep(self, i, steps):
    return 1.0 - i / steps

  def renoise_prob(self, r):
    return r

  def _entries(self, cond, name: str) -> dict[str, jax.Array]:
    if not isinstance(cond, Mapping):
      raise ValueError(f"Paella v3 takes {name} as a dict with entries among {V3_CONDITIONING}, "
                       f"got {type(cond).__name__}")
    unknown = set(cond) - set(V3_CONDITIONING)
    if unknown:
      raise ValueError(f"{name} has unknown entries {sorted(unknown)}; allowed: {V3_CONDITIONING}")
    out = {k: jnp.asarray(v, bool if k == "byt5_mask" else jnp.float32)
           for k, v in cond.items() if v is not None}
    if "byt5_mask" in out and "byt5" not in out:
      raise ValueError(f"{name} has a byt5_mask but no byt5")
    if not out:
      raise ValueError(f"{name} has no conditioning entries")
    return out

  def check(self, cond, uncond):
    cond = self._entries(cond, "cond")
    batch = next(iter(cond.values())).shape[0]
    if any(v.shape[0] != batch for v in cond.values()):
      raise ValueError(f"cond entries differ in batch size: "
                       f"{ {k: v.shape for k, v in cond.items()} }")
    if uncond is not None:  # rows of the empty prompt may be given once, for every sample
      uncond = {k: jnp.broadcast_to(v, (batch, *v.shape[1:])) if v.shape[0] == 1 else v
                for k, v in self._entries(uncond, "uncond").items()}
      if any(v.shape[0] != batch for v in uncond.values()):
        raise ValueError(f"uncond entries must have batch {batch} (or 1)")
    return (cond, uncond), batch

  def prepare(self, conditioning, guided: bool):
    cond, uncond = conditioning
    if not guided:
      return cond
    if uncond is None:
      raise ValueError("guidance with Paella v3 needs `uncond` (e.g. the empty prompt's ByT5 "
                       "and CLIP text embeddings); pass cfg=None to sample without it")
    if "byt5" in cond and "byt5" in uncond and (
        cond["byt5"].shape[1] != uncond["byt5"].shape[1]
        or ("byt5_mask" in cond) != ("byt5_mask" in uncond)):
      length = max(cond["byt5"].shape[1], uncond["byt5"].shape[1])
      cond, uncond = _pad_byt5(cond, length), _pad_byt5(uncond, length)
    if set(cond) != set(uncond):
      return {"cond": cond, "uncond": uncond}
    return {"pair": {k: jnp.concatenate([cond[k], uncond[k]]) for k in cond}}

  def _forward(self, params):
    return lambda x, cond, r: self.model.apply({"params": params}, x, r, **cond)

  def logits(self, params, x, r, prepared, cfg):
    forward = self._forward(params)
    if cfg is None:
      return forward(x, prepared, r)
    if "pair" in prepared:
      return _guided(forward, x, prepared["pair"], r, cfg)
    cond, uncond = forward(x, prepared["cond"], r), forward(x, prepared["uncond"], r)
    return uncond + cfg * (cond - uncond)

  def conditional_logits(self, params, x, r, prepared):
    cond = (prepared["cond"] if "cond" in prepared
            else {k: jnp.split(v, 2)[0] for k, v in prepared["pair"].items()})
    return self._forward(params)(x, cond, r)


_SAMPLERS = {sampler.kind: sampler for sampler in (_PaellaV1, _PaellaV3)}


def _pad_byt5(cond: dict, length: int) -> dict:
  """The entries with byt5 zero-padded to `length` tokens and a byt5_mask marking the real ones."""
  byt5 = cond["byt5"]
  mask = cond.get("byt5_mask", jnp.ones(byt5.shape[:2], bool))
  pad = length - byt5.shape[1]
  return dict(cond, byt5=jnp.pad(byt5, ((0, 0), (0, pad), (0, 0))),
              byt5_mask=jnp.pad(mask, ((0, 0), (0, pad))))


def _family(model):
  """The sampler's arithmetic for the model's family (`paella_jax.families`)."""
  return _SAMPLERS[families.of_model(model).kind](model)


@partial(jax.jit, static_argnames=("family", "steps", "renoise_mode", "typical_min_tokens",
                                   "use_cfg", "use_typical", "conditional_steps"))
def _sample_loop(family, params, conditioning, rng, init_tokens, init_noise_mask, mask,
                 start_step, cfgs, typical_mass, temperatures, renoise_steps, *, steps,
                 renoise_mode, typical_min_tokens, use_cfg, use_typical, conditional_steps):
  """The jit-compiled sampling loop; see `sample` for the arguments. cfgs and temperatures are
  (B, T), typical_mass (B,)."""
  batch = init_tokens.shape[0]
  num_labels = family.model.num_labels
  per_row = rng.ndim == 1
  rows = lambda values: values.reshape(-1, 1, 1, 1)  # (B,) -> broadcasts over (B, h, w, V)
  noise_rng, rng = _split(rng)
  noise = _draw(noise_rng, lambda key, tokens: jax.random.randint(
      key, tokens.shape, 0, num_labels, jnp.int32), init_tokens)
  init_x = jnp.where(init_noise_mask, noise, init_tokens)
  regenerate = mask.astype(bool)
  prepared = family.prepare(conditioning, use_cfg)  # built once, not per step

  def step(i, x):
    step_rng = jax.vmap(jax.random.fold_in, (0, None))(rng, i) if per_row else jax.random.fold_in(rng, i)
    sample_rng, renoise_rng = _split(step_rng)
    r = jnp.full((batch,), family.timestep(i, steps), jnp.float32)
    if not use_cfg:
      logits = family.logits(params, x, r, prepared, None)
    elif conditional_steps >= steps:
      logits = family.logits(params, x, r, prepared, rows(cfgs[:, i]))
    else:  # guidance for the first `conditional_steps` steps only
      logits = jax.lax.cond(i < conditional_steps,
                            lambda: family.logits(params, x, r, prepared, rows(cfgs[:, i])),
                            lambda: family.conditional_logits(params, x, r, prepared))
    if use_typical:
      logits = typical_filter(logits, rows(typical_mass), typical_min_tokens)
    new_x = _draw(sample_rng, draw_codes, logits / rows(temperatures[:, i]))
    new_x = jnp.where(regenerate, new_x, init_x)
    noise_source = {"start": (init_x,), "prev": (x,), "rand": ()}[renoise_mode]
    r_next = jnp.full((batch,), family.timestep(i + 1, steps), jnp.float32)
    renoised = _draw(renoise_rng, lambda key, tokens, prob, *source: replace_tokens(
        key, tokens, prob, num_labels, *source)[0], new_x, family.renoise_prob(r_next),
                     *noise_source)
    return jnp.where(i < renoise_steps, renoised, new_x)

  return jax.lax.fori_loop(start_step, steps, step, init_x)


def row_keys(seed: int, count: int) -> jax.Array:
  """The PRNG keys of a seed's rows 0 .. count - 1: fold_in(key(seed), i), (count,).

  Every caller that samples a request (the pipeline, the server's batches) gives row i of a
  request seeded `seed` this key, so a row's codes depend only on its own key: the same seed
  and settings give the same images whatever else is sampled in the same batch.
  """
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed),
                                                  np.arange(count, dtype=np.uint32))


def _split(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two keys from one key, or two (B,) batches of keys from a (B,) batch (row by row)."""
  keys = jax.vmap(jax.random.split)(rng) if rng.ndim == 1 else jax.random.split(rng)
  return keys[..., 0], keys[..., 1]


def _draw(rng: jax.Array, fn, *batch: jax.Array) -> jax.Array:
  """fn(key, *batch) -> (B, ...) random values: with one key, for the whole batch at once; with a
  (B,) batch of keys, row by row (each row a batch of one), so that a row's draws depend only on
  its own key and not on the other rows."""
  if rng.ndim == 0:
    return fn(rng, *batch)
  return jax.vmap(lambda key, *row: fn(key, *(a[None] for a in row))[0])(rng, *batch)


def _schedules(value, batch: int, steps: int, name: str) -> jax.Array:
  """A validated setting (see `SamplerSettings`) as per-row linear schedules over the steps,
  (B, T) float32: a number, a (start, end) tuple, a (B,) array (one number per row) or a (B, 2)
  array (one schedule per row)."""
  ends = np.asarray(value, np.float32)
  if isinstance(value, np.ndarray):
    if ends.shape[0] != batch:
      raise ValueError(f"{name} has {ends.shape[0]} rows, the batch {batch}")
    ends = ends.reshape(batch, -1)
  ends = np.broadcast_to(ends, (batch, 2))
  return jnp.linspace(ends[:, 0], ends[:, 1], steps, axis=-1, dtype=jnp.float32)


def _masses(value, batch: int) -> jax.Array:
  """typical_mass (a number, a (B,) array, or None = off) -> (B,) float32."""
  masses = np.asarray(1.0 if value is None else value, np.float32).reshape(-1)
  if masses.shape[0] not in (1, batch):
    raise ValueError(f"typical_mass has {masses.shape[0]} rows, the batch {batch}")
  return jnp.broadcast_to(masses, (batch,))


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


def sample(model, params, cond, rng, settings: SamplerSettings | None = None, *,
           latent_shape: Sequence[int] = (32, 32), init_tokens=None, mask=None, uncond=None,
           renoise_steps: int | None = None, sampling_conditional_steps: int | None = None,
           **overrides) -> jax.Array:
  """Samples token maps with Paella's sampler (v1 or v3). Returns (B, h, w) int32 codes.

  Args:
    model, params: a `DenoiseUNet` (v1) or `PaellaV3` and its params.
    cond: v1: CLIP conditioning (B, c_clip) pooled or (B, h', w', c_clip) spatial.
      v3: dict(byt5=(B, L, byt5_embd), clip=(B, clip_embd), clip_image=(B, clip_embd),
      byt5_mask=(B, L) bool), any entry absent or None.
    rng: PRNG key, or (B,) keys, one per row: then every random draw (initial noise, codes,
      renoising) of a row comes from its own key, so a row's codes do not depend on the other
      rows in the batch. The same keys and settings give the same tokens.
    settings: a `SamplerSettings` (default: the model family's, `Family.sampler_defaults`):
      steps T (v1's step i runs at r = i / T, v3's at noise level t_i = 1 - i / T); cfg, the
      guidance weight w (uncond + w (cond - uncond)), None = off; typical_mass and
      typical_min_tokens of locally typical filtering (mass None = off); temperature (start,
      end) over the steps (0 = argmax); renoise_mode: after each step but the last
      `T - renoise_steps`, tokens revert to the initial noise ('start'), to the step's input
      ('prev') or to fresh random codes ('rand'), with probability cos(pi r_{i+1} / 2) (v1) or
      t_{i+1} (v3); start_step: the first step to run (T returns the start tokens). cfg,
      temperature and typical_mass may hold one value per row (see `SamplerSettings`); they
      are traced, so changing them never recompiles.
    **overrides: fields of `settings` replaced (`steps=8, cfg=5.0, typical_mass=None, ...`;
      None turns cfg or typical filtering off).
    latent_shape: (h, w) when `init_tokens` is None.
    init_tokens: (B, h, w) codes to start from. With `mask`, the masked tokens start as noise;
      without it, sampling starts from these tokens as they are (structural editing: pass
      already-noised tokens and a start_step).
    mask: (B, h, w) 1 = regenerate, 0 = keep `init_tokens` (inpainting, outpainting).
    uncond: v3 only: the unconditional conditioning for guidance, a dict like `cond` (the
      original: the empty prompt's ByT5 and CLIP text, no image); entries with batch 1 apply to
      every row. v1 guides with zero conditioning (uncond must be None).
    renoise_steps: number of steps followed by renoising (default T - 1).
    sampling_conditional_steps: guidance for the first this many steps only, then the
      conditional logits alone (default: every step).
  """
  family = _family(model)
  settings = (settings or SamplerSettings.for_family(family.kind)).replace(**overrides)
  steps = settings.steps
  conditioning, batch = family.check(cond, uncond)
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.shape not in ((), (batch,)):
    raise ValueError(f"rng must be one key or one key per row ({batch},), got shape {rng.shape}")
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
  factor = family.latent_factor
  if shape[1] % factor or shape[2] % factor:
    raise ValueError(f"latent size {shape[1:]} must be divisible by {factor}")
  if np.ndim(settings.temperature) == 2 and np.shape(settings.temperature)[0] != batch:
    raise ValueError(f"temperature must be (start, end) or ({batch}, 2), got shape "
                     f"{np.shape(settings.temperature)}")
  # (B, T); a temperature of 0 means the argmax
  temperatures = jnp.maximum(_schedules(settings.temperature, batch, steps, "temperature"), 1e-10)
  cfg, typical_mass = settings.cfg, settings.typical_mass
  return _sample_loop(
      family, params, conditioning, rng, init_tokens, init_noise_mask, mask,
      jnp.asarray(settings.start_step, jnp.int32),
      _schedules(0.0 if cfg is None else cfg, batch, steps, "cfg"),
      _masses(typical_mass, batch), temperatures,
      jnp.asarray(steps - 1 if renoise_steps is None else renoise_steps, jnp.int32),
      steps=steps, renoise_mode=settings.renoise_mode,
      typical_min_tokens=settings.typical_min_tokens, use_cfg=cfg is not None,
      use_typical=typical_mass is not None,
      conditional_steps=steps if sampling_conditional_steps is None
      else min(int(sampling_conditional_steps), steps))
