"""Paella v3 training: the original's noise and loss weights, conditioning dropout, a tiny model
that overfits a fixed batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny_v3
from paella_jax.data.arrays import V3_ARRAYS
from paella_jax.models.paella_v3 import build_model
from paella_jax.noise import replace_tokens, sample_v3_noise_level
from paella_jax.training.loop import make_batcher
from paella_jax.training.step import (init_state, make_optimizer, make_train_step,
                                      v3_drop_conditioning, v3_loss_weight)


def test_loss_weight_matches_the_original(reference_dir):
  io = np.load(reference_dir / "paella_v3_tiny_io.npz")
  weight = v3_loss_weight(jnp.asarray(io["noise_mask"]), jnp.asarray(io["r"]), 0.3)
  np.testing.assert_allclose(weight, io["loss_weight"], atol=1e-7, rtol=0)


def test_noise_levels_and_linear_replacement():
  r = np.asarray(sample_v3_noise_level(jax.random.key(0), 100_000))
  assert r.min() >= 0.001 and r.max() <= 1.0 and abs(r.mean() - 0.5) < 0.01
  tokens = jnp.zeros((3, 64, 64), jnp.int32)
  rates = jnp.array([0.0, 0.3, 1.0])
  _, replaced = replace_tokens(jax.random.key(1), tokens, rates, 8192)
  np.testing.assert_allclose(replaced.mean(axis=(1, 2)), rates, atol=0.02)


def first_batch(cfg, batch_size, byt5="states"):
  """The first batch of the trainer's data source for `cfg` (ByT5 `byt5`: "states" or "ids",
  at most 8 tokens), as jax arrays."""
  cfg.train.batch_size = batch_size
  cfg.data.update(byt5=byt5, byt5_buckets=(8,))
  return {k: jnp.asarray(v) for k, v in next(make_batcher(cfg)).items()}


def test_v3_random_byte_ids():
  """Random byte ids end with </s> at the last real position and are 0 after it."""
  batch = first_batch(tiny_v3.get_config(), 16, "ids")
  assert sorted(batch) == sorted(V3_ARRAYS["ids"])
  ids, mask = np.asarray(batch["byt5_ids"]), np.asarray(batch["byt5_mask"])
  lengths = mask.sum(1)
  np.testing.assert_array_equal(ids[np.arange(16), lengths - 1], 1)
  assert (ids[~mask] == 0).all() and (mask == (np.arange(8) < lengths[:, None])).all()


@pytest.mark.parametrize("byt5", ["states", "ids"])
def test_v3_batches_from_random_and_array_sources(tmp_path, byt5):
  cfg = tiny_v3.get_config()
  batch = first_batch(cfg, 4, byt5)
  assert sorted(batch) == sorted(V3_ARRAYS[byt5])
  assert batch["byt5_mask"].shape == (4, 8) and batch["byt5_mask"].dtype == bool
  if byt5 == "states":
    assert batch["byt5"].shape == (4, 8, 40) and batch["byt5_empty"].shape == (4, 1, 40)
  assert batch["clip_empty"].shape == (4, 24)
  np.testing.assert_array_equal(batch["clip_empty"][0], batch["clip_empty"][3])
  arrays = {k: np.asarray(v) for k, v in batch.items()}
  arrays.update(clip_empty=arrays["clip_empty"][0])
  if byt5 == "states":
    arrays.update(byt5_empty=arrays["byt5_empty"][0])
  del arrays["clip_image"]  # optional
  np.savez(tmp_path / "v3.npz", **arrays)
  cfg.data.update(source="arrays", path=str(tmp_path / "v3.npz"))
  loaded = first_batch(cfg, 4, byt5)
  assert "clip_image" not in loaded
  for key in loaded:  # the same examples, in the batcher's shuffled order
    np.testing.assert_array_equal(np.sort(np.asarray(loaded[key]).reshape(4, -1), 0),
                                  np.sort(np.asarray(batch[key]).reshape(4, -1), 0))


def test_conditioning_dropout_is_drawn_per_batch():
  cfg = tiny_v3.get_config()
  batch = first_batch(cfg, 4)
  dropped, keep_image = v3_drop_conditioning(
      jax.random.key(0), batch, dict(byt5_drop_prob=1.0, clip_keep_prob=0.0,
                                     clip_image_keep_prob=0.0))
  np.testing.assert_array_equal(dropped["byt5"][:, :1], batch["byt5_empty"])
  np.testing.assert_array_equal(dropped["byt5_mask"], np.arange(8)[None].repeat(4, 0) < 1)
  np.testing.assert_array_equal(dropped["clip"], batch["clip_empty"])
  assert not keep_image
  kept, keep_image = v3_drop_conditioning(
      jax.random.key(0), batch, dict(byt5_drop_prob=0.0, clip_keep_prob=1.0,
                                     clip_image_keep_prob=1.0))
  for key in ("byt5", "byt5_mask", "clip"):
    np.testing.assert_array_equal(kept[key], batch[key])
  assert keep_image
  draws = jax.vmap(lambda k: v3_drop_conditioning(k, batch, cfg.train)[0]["clip"][:, 0])(
      jax.random.split(jax.random.key(1), 400))
  same = np.asarray(draws == batch["clip"][None, :, 0])
  assert (same.all(1) | ~same.any(1)).all()  # all rows kept or none
  assert 0.4 < same.all(1).mean() < 0.6       # tiny_v3 keeps CLIP text with p 0.5


@pytest.mark.slow
def test_tiny_v3_overfits_a_fixed_batch():
  """200 AdamW steps on 8 examples (EMA on, 2 micro-batches): the weighted loss falls by more
  than half and the EMA follows the params."""
  cfg = tiny_v3.get_config()
  cfg.latent_shape = (8, 8)
  cfg.train.update(ema_decay=0.9, grad_accum_steps=2, warmup_steps=10)
  model = build_model(cfg.model)
  optimizer = make_optimizer(cfg.train)
  state = init_state(model, optimizer, jax.random.key(0), cfg.latent_shape, ema=True)
  step = jax.jit(make_train_step(model, optimizer, cfg.train))
  batch = first_batch(cfg, 8)
  losses = []
  for _ in range(200):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < 0.5 * first, (first, last)
  assert int(state.step) == 200
  gap = optax.tree.norm(jax.tree.map(jnp.subtract, state.ema_params, state.params))
  assert 0 < float(gap) < 0.2 * float(optax.tree.norm(state.params))


@pytest.mark.slow
def test_v3_trains_through_the_sharded_trainer_and_resumes_exactly(tmp_path):
  """train() on the tiny v3 config: the trainer's v3 batch shardings, export of a paella_v3
  model, and a resumed run equal to a straight one."""
  import json
  from paella_jax.checkpoint import load_model
  from paella_jax.training.loop import train

  def config(steps):
    c = tiny_v3.get_config()
    c.train.update(total_steps=steps, checkpoint_every=2, log_every=1, batch_size=8)
    return c

  straight = train(config(4), str(tmp_path / "a"), progress=False)
  train(config(2), str(tmp_path / "b"), progress=False)
  resumed = train(config(4), str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  losses = lambda d: [json.loads(l)["loss"] for l in open(d / "metrics.jsonl")]
  assert losses(tmp_path / "a")[-2:] == losses(tmp_path / "b")[-2:]
  kind, _, params = load_model(tmp_path / "a" / "model")
  assert kind == "paella_v3"
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(straight.params))
