"""Stage 1: the VQGAN training loop, on the same machinery as the token predictor's.

    module, state = train_vqgan(config, images, workdir)
    module, state = train_vqgan_job(config, workdir)   # on config.data's images: paella-train's
                                                       # `vqgan` job (configs/vqgan_tiny.py)

Orbax checkpoints in WORKDIR/checkpoints (the whole state: params, optimizer, discriminator,
step, RNG) with exact resume, metrics to WORKDIR/metrics.jsonl and TensorBoard, a progress
bar, and the final VQGAN exported to WORKDIR/model (`load_vqgan` reads it). Batches are drawn
from an in-memory image array by a generator seeded with (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would. One jit-compiled step, on one device: the
VQGANs that Paella uses train in hours on one accelerator; larger runs shard the batch
with `paella_jax.sharding` like the token predictor.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.data.read import stage1_images
from paella_jax.encoders.vq import save_vqgan
from paella_jax.metrics import MetricWriter
from paella_jax.models.vqgan import check_images, vqgan_from_config
from paella_jax.training import vqgan as steps
from paella_jax.training.checkpointing import (checkpoint_manager, restore_checkpoint,
                                               save_checkpoint)
from paella_jax.training.loop import _progress


def batch_indices(seed: int, step: int, num_images: int, batch_size: int) -> np.ndarray:
  """The images of step `step`: a pure function of (seed, step), hence exact on resume."""
  return np.random.default_rng([seed, step]).integers(0, num_images, batch_size)


def train_vqgan(config, images: np.ndarray, workdir: str, progress: bool = True):
  """Trains `config.model` on images (N, H, W, 3) in [0, 1]; returns (module, final state)."""
  cfg = config.train
  model = vqgan_from_config(config.model)
  images = np.asarray(images, np.float32)
  check_images(images, model.factor, model.in_channels)
  init = lambda: steps.init_state(model, cfg, jax.random.key(cfg.seed), images.shape[1:3])
  manager = checkpoint_manager(workdir, config)
  restored = restore_checkpoint(manager, jax.eval_shape(init))  # a fresh state only if none
  state = restored[0] if restored is not None else init()
  step_fn = jax.jit(steps.make_train_step(model, cfg), donate_argnums=0)
  writer = MetricWriter(workdir)
  start, total = int(state.step), cfg.total_steps
  bar = _progress(start, total, progress and writer.enabled)
  for step in range(start, total):
    batch = images[batch_indices(cfg.seed, step, len(images), cfg.batch_size)]
    state, metrics = step_fn(state, {"images": jnp.asarray(batch)})
    done = step + 1
    if done % cfg.log_every == 0 or done == total:
      scalars = jax.device_get(metrics)
      writer.write(done, scalars)
      if bar is not None:
        bar.set_postfix(l1=f"{scalars['rec_loss']:.4f}", psnr=f"{scalars['psnr']:.1f}")
    if done % cfg.checkpoint_every == 0 or done == total:
      save_checkpoint(manager, state, {"step": done})
    if bar is not None:
      bar.update(1)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  if bar is not None:
    bar.close()
  if jax.process_index() == 0:
    save_vqgan(os.path.join(workdir, "model"), model, jax.device_get(state.params),
               overwrite=True)
  return model, state


def train_vqgan_job(config, workdir: str, progress: bool = True):
  """Trains `config.model` on the images of `config.data` (`paella_jax.data.read`) at
  config.image_size; returns (module, final state)."""
  return train_vqgan(config, stage1_images(config.data, config.image_size), workdir, progress)
