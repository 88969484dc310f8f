"""Stage-1 VQGAN training: the reconstruction error falls; the GAN and Gumbel paths run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vqgan_tiny
from paella_jax.data.shapes import draw_shapes
from paella_jax.models.vqgan import vqgan_from_config
from paella_jax.training.vqgan import init_state, make_train_step


def tiny(**train):
  c = vqgan_tiny.get_config()
  c.model.update(ch=8, ch_mult=(1, 2), norm_groups=4, z_channels=8, embed_dim=8, n_embed=16)
  c.train.update(batch_size=8, **train)
  return c


def reconstruction_error(model, params, images):
  out = model.apply({"params": params}, images, method="reconstruct")
  return float(jnp.mean(jnp.abs(out - images)))


def test_reconstruction_error_falls():
  c = tiny(learning_rate=3e-3)
  model = vqgan_from_config(c.model)
  images = draw_shapes(8, 16, seed=1)
  state = init_state(model, c.train, jax.random.key(0), (16, 16))
  before = reconstruction_error(model, state.params, images)
  step = jax.jit(make_train_step(model, c.train))
  for _ in range(25):
    state, metrics = step(state, {"images": jnp.asarray(images)})
  after = reconstruction_error(model, state.params, images)
  assert int(state.step) == 25 and np.isfinite(float(metrics["loss"]))
  assert after < 0.6 * before, (before, after)


def test_gumbel_gan_and_perceptual_step():
  c = tiny(disc_weight=0.8, disc_start=1, disc_channels=8, disc_layers=2, perceptual_weight=1.0)
  c.model.quantizer = "gumbel"
  model = vqgan_from_config(c.model)
  calls = []

  def perceptual(x, y):
    calls.append(x.shape)
    return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))

  state = init_state(model, c.train, jax.random.key(1), (16, 16))
  step = jax.jit(make_train_step(model, c.train, perceptual))
  images = {"images": jnp.asarray(draw_shapes(8, 16, seed=2))}
  state, m0 = step(state, images)  # before disc_start: no GAN terms
  disc_before = state.disc_params
  state, m1 = step(state, images)
  assert calls and float(m0["d_weight"]) == 0.0 and float(m0["d_loss"]) == 0.0
  assert float(m1["d_weight"]) > 0.0 and np.isfinite(float(m1["d_loss"]))
  assert float(m1["temperature"]) < 1.0 and "perceptual_loss" in m1
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), disc_before, state.disc_params)
  assert all(jax.tree.leaves(changed))


def test_gumbel_training_needs_a_key():
  c = tiny()
  c.model.quantizer = "gumbel"
  model = vqgan_from_config(c.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), method="reconstruct")
  with pytest.raises(ValueError, match="PRNG key"):
    model.apply(params, jnp.zeros((1, 16, 16, 3)))
