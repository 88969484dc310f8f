"""The training loop: data -> jit-compiled step -> metrics, Orbax checkpoints, final export.

    state = train(config, workdir)

Resumes from the latest checkpoint in WORKDIR/checkpoints (state, RNG and the data iterator's
position), so a restarted run continues exactly where it stopped. At the end the raw params are
exported to WORKDIR/model as an inference checkpoint that `sample.py` loads.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.checkpoint import save_model
from paella_jax.data.arrays import (ArrayBatcher, check_token_arrays, load_token_arrays,
                                    random_token_arrays)
from paella_jax.metrics import MetricWriter
from paella_jax.models.paella import build_model, count_params
from paella_jax.training.step import TrainState, init_state, make_optimizer, make_train_step

KIND = "paella_v1"


def make_batcher(config, state: dict | None = None) -> ArrayBatcher:
  """The config's data source: "random" or "arrays" (an .npz file or a directory)."""
  m = config.model
  if config.data.source == "random":
    tokens, clip = random_token_arrays(max(config.train.batch_size * 4, 64), config.latent_shape,
                                       m.num_labels, m.c_clip, config.train.seed)
  elif config.data.source == "arrays":
    tokens, clip = load_token_arrays(config.data.path)
  else:
    raise ValueError(f"unknown data.source {config.data.source!r} (random, arrays)")
  check_token_arrays(tokens, clip, m.num_labels, m.c_clip, source=config.data.path or "random")
  return ArrayBatcher(tokens, clip, config.train.batch_size, config.train.seed, state,
                      jax.process_index(), jax.process_count())


def checkpoint_manager(workdir: str, config):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save_checkpoint(manager, state: TrainState, data_state: dict) -> None:
  import orbax.checkpoint as ocp
  manager.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_checkpoint(manager, abstract_state: TrainState) -> tuple[TrainState, dict] | None:
  """The latest complete checkpoint as (state, data iterator state), or None."""
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


def train(config, workdir: str, progress: bool = True) -> TrainState:
  """Trains the token predictor of `config` in `workdir`; returns the final state."""
  model = build_model(config.model)
  optimizer = make_optimizer(config.train)
  rng = jax.random.key(config.train.seed)
  state = init_state(model, optimizer, rng, tuple(config.latent_shape))
  manager = checkpoint_manager(workdir, config)
  restored = restore_checkpoint(manager, jax.eval_shape(lambda: state))
  data_state = None
  if restored is not None:
    state, data_state = restored
  batches = make_batcher(config, data_state)
  train_step = jax.jit(make_train_step(model, optimizer, config.train), donate_argnums=0)
  writer = MetricWriter(workdir)
  total = config.train.total_steps
  start = int(state.step)
  if writer.enabled:
    print(f"training {count_params(state.params):,} params, steps {start} -> {total}, "
          f"workdir {workdir}")
  bar = _progress(start, total, progress and writer.enabled)
  last_time, last_step = time.perf_counter(), start
  metrics = None
  for step in range(start, total):
    batch = next(batches)
    state, metrics = train_step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    done = step + 1
    if done % config.train.log_every == 0 or done == total:
      scalars = jax.device_get(metrics)
      now = time.perf_counter()
      scalars["steps_per_sec"] = (done - last_step) / (now - last_time)
      scalars["images_per_sec"] = scalars["steps_per_sec"] * config.train.batch_size
      last_time, last_step = now, done
      writer.write(done, scalars)
      if bar is not None:
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", acc=f"{scalars['accuracy']:.3f}")
    if done % config.train.checkpoint_every == 0 or done == total:
      save_checkpoint(manager, state, batches.state())
    if bar is not None:
      bar.update(1)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  if bar is not None:
    bar.close()
  if jax.process_index() == 0:
    export_model(state.params, model, os.path.join(workdir, "model"), config)
  return state


def export_model(params, model, out_dir: str, config) -> str:
  """Writes an inference checkpoint (kind paella_v1) that sample.py loads."""
  return save_model(out_dir, params, KIND, model.architecture(),
                    meta={"latent_shape": list(config.latent_shape),
                          "sampling": config.sampling.to_dict()}, overwrite=True)


def _progress(start: int, total: int, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
