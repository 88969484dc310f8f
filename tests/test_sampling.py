"""Typical filtering against the original, and properties of the jit sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from flax import linen as nn

from paella_jax.models.paella import build_model
from paella_jax.sampling import _sample_loop, draw_codes, guided_logits, sample, typical_filter

CASES = [(m, k) for m in (0.2, 0.5, 0.9) for k in (1, 5)]


def sorted_typical_filter(logits, mass, min_tokens):
  """The original algorithm with a stable sort, in numpy float32 (the test's reference)."""
  logits = np.asarray(logits, np.float32)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  p = np.exp(log_p)
  with np.errstate(invalid="ignore"):  # -inf * 0 for removed codes, as in the original
    entropy = -np.nansum(log_p * p, -1, keepdims=True)
  score = np.abs(-log_p - entropy)
  order = np.argsort(score, -1, kind="stable")
  sorted_score = np.take_along_axis(score, order, -1)
  cumsum = np.cumsum(np.take_along_axis(p, order, -1), -1, dtype=np.float32)
  last = np.minimum((cumsum < mass).sum(-1, keepdims=True), logits.shape[-1] - 1)
  remove_sorted = sorted_score > np.take_along_axis(sorted_score, last, -1)
  remove_sorted[..., :min_tokens] = False
  remove = np.zeros_like(remove_sorted)
  np.put_along_axis(remove, order, remove_sorted, -1)
  return np.where(remove, -np.inf, logits)


@pytest.mark.parametrize("mass,min_tokens", CASES)
def test_typical_filter_matches_original_fixture(reference_dir, mass, min_tokens):
  data = np.load(reference_dir / "paella_v1_typical_filter.npz")
  logits = data["logits_nchw"].transpose(0, 2, 3, 1).reshape(-1, 64)
  expected = data[f"mass{mass}_min{min_tokens}"]
  out = np.asarray(typical_filter(jnp.asarray(logits), mass, min_tokens))
  np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expected))
  np.testing.assert_array_equal(out[~np.isneginf(out)], expected[~np.isneginf(expected)])


@pytest.mark.parametrize("mass,min_tokens", CASES)
def test_typical_filter_flat_rows_ties_and_masked_codes(mass, min_tokens):
  rng = np.random.default_rng(0)
  flat = np.zeros((3, 50), np.float32)                                 # every score ties
  ties = np.repeat(rng.normal(size=(6, 8)).astype(np.float32), 8, -1)  # groups of equal codes
  masked = rng.normal(size=(6, 64)).astype(np.float32) * 3
  masked[:, ::3] = -np.inf                                             # already removed codes
  peaked = rng.normal(size=(6, 64)).astype(np.float32) * 12
  for logits in (flat, ties, masked, peaked):
    out = np.asarray(typical_filter(jnp.asarray(logits), mass, min_tokens))
    np.testing.assert_array_equal(out, sorted_typical_filter(logits, mass, min_tokens))


def test_typical_filter_random_rows_and_8192_codes():
  rng = np.random.default_rng(1)
  for codes, scale in ((64, 1.0), (1024, 4.0), (8192, 2.0)):
    logits = (rng.normal(size=(32, codes)) * scale).astype(np.float32)
    out = np.asarray(jax.jit(typical_filter)(jnp.asarray(logits)))
    np.testing.assert_array_equal(out, sorted_typical_filter(logits, 0.2, 1))


def test_typical_filter_rejects_bad_arguments():
  with pytest.raises(ValueError, match="mass"):
    typical_filter(jnp.zeros((2, 4)), 0.0)
  with pytest.raises(ValueError, match="min_tokens"):
    typical_filter(jnp.zeros((2, 4)), 0.2, 0)


@pytest.mark.parametrize("codes", [5, 48, 1024])
def test_draw_codes_follows_the_softmax(codes):
  """The two-stage draw against the exact distribution: chi-square over 100k draws of one row,
  with a third of the codes at -inf (never drawn) and V not a multiple of the group size."""
  rng = np.random.default_rng(codes)
  logits = (rng.normal(size=codes) * 2).astype(np.float32)
  logits[rng.permutation(codes)[: codes // 3]] = -np.inf
  draws = np.asarray(jax.jit(draw_codes)(jax.random.key(0),
                                         jnp.broadcast_to(jnp.asarray(logits), (100_000, codes))))
  assert draws.dtype == np.int32 and draws.shape == (100_000,)
  counts = np.bincount(draws, minlength=codes)
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits)), np.float64)
  assert counts[p == 0].sum() == 0
  expected = p[p > 0] * draws.size
  frequent = expected >= 5  # chi-square needs >= 5 expected per cell: pool the rare codes
  observed = np.append(counts[p > 0][frequent], counts[p > 0][~frequent].sum())
  expected = np.append(expected[frequent], expected[~frequent].sum())
  if expected[-1] == 0:
    observed, expected = observed[:-1], expected[:-1]
  assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_draw_codes_shapes_argmax_limit_and_keys():
  logits = jax.random.normal(jax.random.key(0), (3, 4, 5, 100)) * 3
  a = draw_codes(jax.random.key(1), logits)
  assert a.shape == (3, 4, 5) and a.dtype == jnp.int32
  np.testing.assert_array_equal(a, draw_codes(jax.random.key(1), logits))
  assert not np.array_equal(a, draw_codes(jax.random.key(2), logits))
  np.testing.assert_array_equal(draw_codes(jax.random.key(1), logits / 1e-10),
                                jnp.argmax(logits, -1))


@pytest.fixture(scope="module")
def tiny_model():
  model = build_model(dict(num_labels=32, c_hidden=32, c_clip=8, c_r=16, down_levels=[1, 1],
                           up_levels=[1, 1]))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8), jnp.int32), jnp.zeros((1, 8)),
                      jnp.zeros((1,)))["params"]
  params = jax.tree.map(lambda p: p * 3, nn.meta.unbox(params))  # confident, varied logits
  clip = jax.random.normal(jax.random.key(1), (3, 8))
  return model, params, clip


def test_sample_shapes_determinism_and_no_recompile(tiny_model):
  model, params, clip = tiny_model
  a = sample(model, params, clip, jax.random.key(0), latent_shape=(8, 12))
  assert a.shape == (3, 8, 12) and a.dtype == jnp.int32
  assert int(a.min()) >= 0 and int(a.max()) < 32
  cache = _sample_loop._cache_size()
  b = sample(model, params, clip + 0.0, jax.random.key(0), latent_shape=(8, 12), cfg=3.0,
             typical_mass=0.5, temperature=(1.2, 0.4))  # traced settings: same program
  assert _sample_loop._cache_size() == cache
  c = sample(model, params, clip, jax.random.key(0), latent_shape=(8, 12))
  np.testing.assert_array_equal(a, c)
  d = sample(model, params, clip, jax.random.key(1), latent_shape=(8, 12))
  assert not np.array_equal(a, d)
  assert not np.array_equal(a, b)


def test_one_cold_step_is_the_argmax_of_the_guided_logits(tiny_model):
  model, params, clip = tiny_model
  init = jax.random.randint(jax.random.key(3), (3, 8, 8), 0, 32)
  out = sample(model, params, clip, jax.random.key(0), steps=4, start_step=3, init_tokens=init,
               cfg=2.0, typical_mass=None, temperature=(1e-6, 1e-6))
  logits = guided_logits(model, params, init, clip, jnp.full((3,), 0.75), jnp.float32(2.0))
  np.testing.assert_array_equal(out, jnp.argmax(logits, -1))


def test_guidance_is_one_batched_forward(tiny_model):
  model, params, clip = tiny_model
  x = jax.random.randint(jax.random.key(3), (3, 8, 8), 0, 32)
  r = jnp.full((3,), 0.25)
  jaxpr = jax.make_jaxpr(lambda p: guided_logits(model, p, x, clip, r, jnp.float32(5.0)))(params)
  cond = model.apply({"params": params}, x, clip, r)
  uncond = model.apply({"params": params}, x, jnp.zeros_like(clip), r)
  np.testing.assert_allclose(guided_logits(model, params, x, clip, r, jnp.float32(5.0)),
                             uncond + 5.0 * (cond - uncond), atol=1e-4, rtol=1e-5)
  embeds = [e for e in jaxpr.jaxpr.eqns if "conv" in e.primitive.name]
  assert all(e.invars[0].aval.shape[0] == 6 for e in embeds)  # both halves in one batch


@pytest.mark.parametrize("mode", ["start", "prev", "rand"])
def test_mask_keeps_tokens_outside_it(tiny_model, mode):
  model, params, clip = tiny_model
  init = jax.random.randint(jax.random.key(4), (3, 8, 8), 0, 32)
  mask = np.zeros((3, 8, 8), np.int32)
  mask[:, 2:6, 1:5] = 1
  out = np.asarray(sample(model, params, clip, jax.random.key(5), init_tokens=init, mask=mask,
                          renoise_mode=mode))
  np.testing.assert_array_equal(out[mask == 0], np.asarray(init)[mask == 0])
  assert (out[mask == 1] != np.asarray(init)[mask == 1]).any()


def test_start_step_equal_to_steps_returns_the_init_tokens(tiny_model):
  model, params, clip = tiny_model
  init = jax.random.randint(jax.random.key(6), (3, 8, 8), 0, 32)
  out = sample(model, params, clip, jax.random.key(0), steps=24, start_step=24, init_tokens=init,
               renoise_mode="prev")
  np.testing.assert_array_equal(out, init)


def test_spatial_conditioning_samples(tiny_model):
  model, params, _ = tiny_model
  clip_map = jax.random.normal(jax.random.key(7), (2, 1, 2, 8))
  out = sample(model, params, clip_map, jax.random.key(0), latent_shape=(8, 16))
  assert out.shape == (2, 8, 16)


def test_sampler_bad_inputs(tiny_model):
  model, params, clip = tiny_model
  init = np.zeros((3, 8, 8), np.int32)
  with pytest.raises(ValueError, match="mask needs init_tokens"):
    sample(model, params, clip, jax.random.key(0), mask=np.ones((3, 8, 8)))
  with pytest.raises(ValueError, match=r"\[0, 32\)"):
    sample(model, params, clip, jax.random.key(0), init_tokens=init + 40)
  with pytest.raises(ValueError, match="integer"):
    sample(model, params, clip, jax.random.key(0), init_tokens=init.astype(np.float32))
  with pytest.raises(ValueError, match="mask has shape"):
    sample(model, params, clip, jax.random.key(0), init_tokens=init, mask=np.ones((3, 4, 4)))
  with pytest.raises(ValueError, match="renoise_mode"):
    sample(model, params, clip, jax.random.key(0), renoise_mode="later")
  with pytest.raises(ValueError, match="clip must be"):
    sample(model, params, clip[:, :4], jax.random.key(0))
  with pytest.raises(ValueError, match="divisible"):
    sample(model, params, clip, jax.random.key(0), latent_shape=(7, 8))
