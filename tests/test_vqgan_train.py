"""Stage-1 VQGAN training: the reconstruction error falls; the GAN and Gumbel paths run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vqgan_tiny
from paella_jax.data.scenes import make_dataset
from paella_jax.models.vqgan import vqgan_from_config
from paella_jax.training.vqgan import init_state, learning_rate, make_train_step


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
  images = make_dataset(8, seed=1, size=16)[0]
  state = init_state(model, c.train, jax.random.key(0), (16, 16))
  before = reconstruction_error(model, state.params, images)
  step = jax.jit(make_train_step(model, c.train))
  for _ in range(25):
    state, metrics = step(state, {"images": jnp.asarray(images)})
  after = reconstruction_error(model, state.params, images)
  assert int(state.step) == 25 and np.isfinite(float(metrics["loss"]))
  assert after < 0.6 * before, (before, after)


def test_learning_rate_decay_ends_at_zero():
  assert learning_rate(dict(learning_rate=1e-3, total_steps=100)) == 1e-3  # taming's constant
  schedule = learning_rate(dict(learning_rate=1e-3, total_steps=100, lr_decay_steps=40))
  rates = np.array([float(schedule(s)) for s in (0, 59, 60, 80, 100)])
  np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_decayed_rate_moves_the_params_less_at_the_end():
  c = tiny(learning_rate=3e-3, total_steps=6, lr_decay_steps=3)
  model = vqgan_from_config(c.model)
  images = jnp.asarray(make_dataset(8, seed=1, size=16)[0])
  state = init_state(model, c.train, jax.random.key(0), (16, 16))
  step = jax.jit(make_train_step(model, c.train))
  moves = []
  for _ in range(6):
    new, _ = step(state, {"images": images})
    moves.append(float(optax.tree.norm(jax.tree.map(jnp.subtract, new.params, state.params))))
    state = new
  # Adam's steps scale with the rate: 1e-3 up to step 3, then 0.75x and 0.25x of it
  assert moves[5] < 0.5 * moves[2] and moves[4] < moves[3], moves


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
  images = {"images": jnp.asarray(make_dataset(8, seed=2, size=16)[0])}
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


def test_stage1_loop_checkpoints_resume_exactly_and_export(tmp_path):
  from paella_jax.encoders.vq import load_vqgan
  from paella_jax.training.vqgan_loop import train_vqgan
  images = make_dataset(32, seed=3, size=16)[0]

  def config(total):
    c = tiny(learning_rate=3e-3, total_steps=total, log_every=2, checkpoint_every=2)
    return c

  _, straight = train_vqgan(config(4), images, str(tmp_path / "a"), progress=False)
  train_vqgan(config(2), images, str(tmp_path / "b"), progress=False)
  _, resumed = train_vqgan(config(4), images, str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  assert (tmp_path / "b" / "metrics.jsonl").is_file()
  module, params = load_vqgan(tmp_path / "a" / "model")
  jax.tree.map(np.testing.assert_array_equal, params, straight.params)
  with pytest.raises(ValueError, match="multiple"):
    train_vqgan(config(1), images[:, :15], str(tmp_path / "c"), progress=False)
