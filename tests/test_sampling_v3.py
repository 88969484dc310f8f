"""The one sampler with Paella v3 models: the original v3 sampler's distribution, guidance with
padded and absent conditioning, editing inputs, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from paella_jax.convert import paella_v3_from_torch
from paella_jax.sampling import _sample_loop, sample
from tests.torch_reference_v3 import ReferenceV3, reference_sample

ARCH = dict(c_in=8, c_out=8, num_labels=8, c_r=16, patch_size=2, c_cond=16, c_hidden=[16],
            nhead=[4], blocks=[1], level_config=["CTA"], clip_embd=12, byt5_embd=20,
            clip_seq_len=2, kernel_size=3, self_attn=True)


def marginals_p_value(a, b, codes):
  """Two-sample chi-square over every position's code histogram, pooled: a, b (N, h, w)."""
  chi2, dof = 0.0, 0
  for pos in np.ndindex(a.shape[1:]):
    counts = np.stack([np.bincount(s[(slice(None),) + pos], minlength=codes) for s in (a, b)])
    counts = counts[:, counts.sum(0) > 0]
    if counts.shape[1] > 1:
      stat, _, d, _ = stats.chi2_contingency(counts, correction=False)
      chi2, dof = chi2 + stat, dof + d
  return stats.chi2.sf(chi2, dof)


@pytest.fixture(scope="module")
def setup():
  torch.manual_seed(0)
  ref = ReferenceV3(**ARCH).eval()
  with torch.no_grad():  # random values everywhere: confident logits that depend on everything
    for p in ref.parameters():
      p.copy_(torch.randn_like(p) * 0.5)
    ref.out_mapper[1].weight.mul_(4)
  model, params = paella_v3_from_torch(ref.state_dict(), nhead=ARCH["nhead"])
  rng = np.random.default_rng(0)
  cond = dict(byt5=rng.standard_normal((1, 5, 20)), clip=rng.standard_normal((1, 12)))
  uncond = dict(byt5=rng.standard_normal((1, 2, 20)), clip=rng.standard_normal((1, 12)))
  as_f32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}
  return ref, model, params, as_f32(cond), as_f32(uncond)


def test_draws_from_the_original_samplers_distribution(setup):
  """Per-position marginals of 4000 samples against the original algorithm's (PyTorch), with a
  cfg schedule, guidance for the first 2 of 3 steps, a temperature schedule and renoising; a
  sampler with other settings is told apart by the same test."""
  ref, model, params, cond, uncond = setup
  n, shape = 4000, (4, 4)
  settings = dict(steps=3, temperature=(1.0, 0.5), cfg=(3.0, 2.0))
  ours = np.asarray(sample(model, params, {k: np.repeat(v, n, 0) for k, v in cond.items()},
                           jax.random.key(0), latent_shape=shape, uncond=uncond,
                           sampling_conditional_steps=2, typical_mass=None, **settings))
  t = lambda d: {k: torch.from_numpy(np.repeat(v, n, 0)) for k, v in d.items()}
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    theirs = reference_sample(ref, t(cond), t(uncond), (n, *shape), conditional_steps=2,
                              generator=gen, **settings)
    other = reference_sample(ref, t(cond), t(uncond), (n, *shape), conditional_steps=3,
                             generator=gen, **settings)
  assert len(np.unique(ours)) == 8 and np.bincount(ours.ravel()).max() > 0.3 * ours.size
  assert marginals_p_value(ours, theirs, 8) > 1e-3
  assert marginals_p_value(other, theirs, 8) < 1e-6  # the test sees a change of guidance


def test_guided_step_with_padding_and_absent_entries_matches_separate_forwards(setup):
  """A cold last step is the argmax of uncond + cfg (cond - uncond), the halves computed
  apart without padding: ByT5 of different lengths (batched with a key mask), and a CLIP image
  only in the conditional half (two forwards)."""
  _, model, params, cond, uncond = setup
  cond = {k: np.repeat(v, 2, 0) for k, v in cond.items()}
  init = jax.random.randint(jax.random.key(3), (2, 4, 4), 0, 8)
  r = jnp.full((2,), 1.0 - 2 / 3)
  apply = jax.jit(model.apply)
  for extra in ({}, {"clip_image": np.ones((2, 12), np.float32)}):
    c = dict(cond, **extra)
    out = sample(model, params, c, jax.random.key(0), steps=3, start_step=2, init_tokens=init,
                 cfg=(1.0, 2.5), temperature=(1e-6, 1e-6), uncond=uncond)
    u = {k: np.repeat(v, 2, 0) for k, v in uncond.items()}
    lc, lu = apply({"params": params}, init, r, **c), apply({"params": params}, init, r, **u)
    np.testing.assert_array_equal(out, jnp.argmax(lu + 2.5 * (lc - lu), -1))


def test_no_recompile_determinism_and_editing_inputs(setup):
  _, model, params, cond, uncond = setup
  cond = {k: np.repeat(v, 3, 0) for k, v in cond.items()}
  a = sample(model, params, cond, jax.random.key(0), uncond=uncond, latent_shape=(4, 8))
  assert a.shape == (3, 4, 8) and a.dtype == jnp.int32 and int(a.max()) < 8
  cache = _sample_loop._cache_size()
  b = sample(model, params, cond, jax.random.key(0), uncond=uncond, latent_shape=(4, 8),
             cfg=3.0, temperature=(1.2, 0.1))  # traced settings: same program
  assert _sample_loop._cache_size() == cache and not np.array_equal(a, b)
  np.testing.assert_array_equal(
      a, sample(model, params, cond, jax.random.key(0), uncond=uncond, latent_shape=(4, 8)))
  init = jax.random.randint(jax.random.key(4), (3, 4, 8), 0, 8)
  mask = np.zeros((3, 4, 8), np.int32)
  mask[:, 1:3, 2:6] = 1
  out = np.asarray(sample(model, params, cond, jax.random.key(5), uncond=uncond,
                          init_tokens=init, mask=mask, typical_mass=0.5))
  np.testing.assert_array_equal(out[mask == 0], np.asarray(init)[mask == 0])
  np.testing.assert_array_equal(
      sample(model, params, cond, jax.random.key(0), cfg=None, init_tokens=init, start_step=12),
      init)


def test_v3_conditioning_errors(setup):
  _, model, params, cond, uncond = setup
  with pytest.raises(ValueError, match="needs `uncond`"):
    sample(model, params, cond, jax.random.key(0), latent_shape=(4, 4))
  with pytest.raises(ValueError, match="unknown entries"):
    sample(model, params, dict(cond, t5=cond["byt5"]), jax.random.key(0), uncond=uncond)
  with pytest.raises(ValueError, match="as a dict"):
    sample(model, params, cond["clip"], jax.random.key(0), uncond=uncond)
  with pytest.raises(ValueError, match="batch"):
    sample(model, params, dict(cond, clip=np.zeros((2, 12), np.float32)), jax.random.key(0),
           uncond=uncond)
  with pytest.raises(ValueError, match="divisible by 2"):
    sample(model, params, cond, jax.random.key(0), uncond=uncond, latent_shape=(3, 4))
