"""The training loop: data -> sharded jit-compiled step -> metrics, Orbax checkpoints, export.

    state = train(config, workdir)

Runs on every process of a (multi-host) job: each process loads only its rows of the global
batch; process 0 logs. Resumes from the latest complete checkpoint in WORKDIR/checkpoints
(params, optimizer state, EMA, step, RNG and the data iterator's position), also onto a different
mesh, so a restarted run continues exactly where it stopped. SIGTERM (preemption) saves a
checkpoint at the next step and stops. At the end an inference checkpoint is exported to
WORKDIR/model (config.export: EMA or raw params, float32 or bfloat16) that `sample.py` loads.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax import families
from paella_jax.checkpoint import save_model
from paella_jax.data.arrays import (ArrayBatcher, check_token_arrays, load_token_arrays,
                                    random_token_arrays, v3_arrays)
from paella_jax.hardware import chip_info
from paella_jax.metrics import MetricWriter
from paella_jax.models.paella import count_params
from paella_jax.sharding import global_batch, process_rows
from paella_jax.training.checkpointing import (checkpoint_manager, restore_checkpoint,
                                               save_checkpoint)
from paella_jax.training.partition import Trainer, v3_text_input
from paella_jax.training.step import TrainState

def make_batcher(config, state: dict | None = None, rows: slice | None = None):
  """The config's data source ("random"; "arrays": an .npz file or a directory; "records":
  a directory written by paella_jax.data.prepare; "images": raw images encoded on the fly, see
  docs/data.md; "scenes": the demo's scenes encoded on the fly), yielding this process's `rows` of each global batch."""
  return _BATCHERS[families.of_config(config).kind](config, state, rows)


def _v1_batcher(config, state, rows):
  """Paella v1: "records", "images", "scenes" (`paella_jax.data.loader`), "random" or
  "arrays"."""
  m = config.model
  if config.data.source in ("records", "images", "scenes"):
    from paella_jax.data.loader import batcher_from_config
    return batcher_from_config(config, state, rows)
  if config.data.source == "random":
    tokens, clip = random_token_arrays(max(config.train.batch_size * 4, 64), config.latent_shape,
                                       m.num_labels, m.c_clip, config.train.seed)
  elif config.data.source == "arrays":
    tokens, clip = load_token_arrays(config.data.path)
  else:
    raise ValueError(f"unknown data.source {config.data.source!r} (random, arrays, records, "
                     "images, scenes)")
  check_token_arrays(tokens, clip, m.num_labels, m.c_clip, source=config.data.path or "random")
  return ArrayBatcher(tokens, clip, config.train.batch_size, config.train.seed, state, rows)


def _v3_batcher(config, state, rows):
  """Paella v3: "records" (`paella-prepare --family v3`), "random" or "arrays" (an .npz, see
  `paella_jax.data.arrays.v3_arrays`), with ByT5 byte ids or states as config.data.byt5 says."""
  d, t, model = config.data, config.train, families.PAELLA_V3.build_model(config.model)
  byt5 = v3_text_input(config)
  if d.source == "records":
    from paella_jax.data.loader import V3RecordBatcher
    batcher = V3RecordBatcher(d.path, t.batch_size, d.byt5_buckets, t.seed, state, rows,
                              d.get("workers", 0), d.get("prefetch", 2))
    batcher.check(config.latent_shape, model.num_labels, model.clip_embd, byt5, model.byt5_embd)
    return batcher
  if d.source not in ("random", "arrays"):
    raise ValueError(f"Paella v3 trains from data.source 'records', 'random' or 'arrays', got "
                     f"{d.source!r}")
  path = d.path if d.source == "arrays" else None
  arrays = v3_arrays(path, max(t.batch_size * 4, 64), tuple(config.latent_shape), model,
                     max(d.byt5_buckets), t.seed, byt5)
  tokens, clip = arrays.pop("tokens"), arrays.pop("clip")
  return ArrayBatcher(tokens, clip, t.batch_size, t.seed, state, rows, extra=arrays)


# The data sources of each model family's training (paella_jax/families.py).
_BATCHERS = {"paella_v1": _v1_batcher, "paella_v3": _v3_batcher}


def bucketed(batch: dict, buckets) -> dict:
  """A v3 batch with its ByT5 inputs fitted to the smallest bucket that holds every process's
  longest caption (so every process gives the same shape, and jit sees len(buckets) at most)."""
  from paella_jax.data.loader import bucket_length, byt5_extent, fit_byt5
  length = bucket_length(byt5_extent(batch), buckets)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    length = int(np.max(multihost_utils.process_allgather(np.int32(length))))
  return fit_byt5(batch, length)


class PreemptionFlag:
  """Set by SIGTERM. Multi-process jobs use JAX's preemption sync instead (through Orbax's
  `reached_preemption`), so that all processes stop at the same step."""

  def __init__(self):
    self.raised = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.raised = True

  def reached(self, manager, step: int) -> bool:
    return self.raised or (jax.process_count() > 1 and manager.reached_preemption(step))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir: str, progress: bool = True) -> TrainState:
  """Trains the token predictor of `config` in `workdir`; returns the final state."""
  preemption = PreemptionFlag()
  trainer = Trainer.create(config)
  trainer.check_batch(config.train.batch_size)  # before any data is read or step compiled
  manager = checkpoint_manager(workdir, config)
  restored = restore_checkpoint(manager, trainer.abstract_state())
  state, data_state = restored if restored is not None else (trainer.init(), None)
  if restored is None and config.train.get("init_from") and trainer.lora is None:
    state = load_initial_params(state, config.train.init_from, trainer.model)
  total, batch_size = config.train.total_steps, config.train.batch_size
  batches = make_batcher(config, data_state, process_rows(trainer.batch_sharding, batch_size))
  buckets = config.data.byt5_buckets if v3_text_input(config) else None
  compiled = {}  # batch shapes -> (compiled step, its FLOPs per device); v3: one per ByT5 bucket
  peak = config.train.peak_flops_per_device or (chip_info(jax.devices()[0].device_kind)
                                                or (0.0,))[0]
  writer = MetricWriter(workdir)
  start = int(state.step)
  if writer.enabled:
    print(f"training {count_params(state.params):,} params on {jax.device_count()} devices "
          f"(mesh {dict(trainer.mesh.shape)}), steps {start} -> {total}, workdir {workdir}")
  bar = _progress(start, total, progress and writer.enabled)
  last_time, last_step = time.perf_counter(), start
  for step in range(start, total):
    local = next(batches)
    batch = global_batch(local if buckets is None else bucketed(local, buckets),
                         trainer.batch_sharding, batch_size)
    shapes = tuple(sorted((k, v.shape) for k, v in batch.items()))
    if shapes not in compiled:  # compile time stays out of the throughput
      began = time.perf_counter()
      step_fn = trainer.step.lower(state, batch, *trainer.frozen_args).compile()
      compiled[shapes] = step_fn, step_fn.cost_analysis().get("flops", 0.0)
      last_time += time.perf_counter() - began
    step_fn, flops = compiled[shapes]
    state, metrics = step_fn(state, batch, *trainer.frozen_args)
    done = step + 1
    if done % config.train.log_every == 0 or done == total:
      scalars = jax.device_get(metrics)
      now = time.perf_counter()
      scalars["steps_per_sec"] = (done - last_step) / (now - last_time)
      scalars["images_per_sec"] = scalars["steps_per_sec"] * batch_size
      if peak:
        scalars["mfu"] = flops * scalars["steps_per_sec"] / peak
      last_time, last_step = now, done
      writer.write(done, scalars)
      if bar is not None:
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", acc=f"{scalars['accuracy']:.3f}")
    if bar is not None:
      bar.update(1)
    preempted = preemption.reached(manager, done)
    if done % config.train.checkpoint_every == 0 or done == total or preempted:
      save_checkpoint(manager, state, batches.state(), force=preempted)
    if preempted:
      if writer.enabled:
        print(f"preempted: checkpoint saved at step {done}")
      break
  preemption.restore()
  manager.wait_until_finished()
  manager.close()
  writer.close()
  if bar is not None:
    bar.close()
  if int(state.step) == total and trainer.lora is not None:
    out = export_adapter(state, trainer, os.path.join(workdir, ADAPTER_FILE))
    if out:
      print(f"done: adapter written to {out}")
  elif int(state.step) == total:
    out = export_model(state, trainer.model, os.path.join(workdir, "model"), config)
    if out:
      print(f"done: model written to {out}")
  return state


def load_initial_params(state: TrainState, ckpt_dir: str, model) -> TrainState:
  """Fine-tuning: the params (and EMA) of `state` replaced by an inference checkpoint's, placed
  with the state's shardings; the optimizer starts fresh. The architectures must match."""
  loaded, params = families.of_model(model).load_checkpoint(ckpt_dir)
  if loaded.architecture() != model.architecture():
    raise ValueError(f"{ckpt_dir} holds {loaded.architecture()}, but the config trains "
                     f"{model.architecture()}")
  place = lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding)
  params = jax.tree.map(place, params, state.params)
  ema = None if state.ema_params is None else jax.tree.map(place, params, state.ema_params)
  return state.replace(params=params, ema_params=ema)


def exported_weights(state: TrainState, config):
  """The params an export writes: the EMA (config.export.weights "ema") or the raw ones."""
  weights = state.ema_params if config.export.weights == "ema" else state.params
  if weights is None:
    raise ValueError("export.weights='ema' needs train.ema_decay > 0")
  return weights


ADAPTER_FILE = "adapter.safetensors"


def export_adapter(state: TrainState, trainer, path: str) -> str | None:
  """Writes LoRA's adapter file (the EMA or raw factors, config.export.weights) for the base
  model config.train.init_from; process 0 writes."""
  from flax.traverse_util import flatten_dict
  from paella_jax.checkpoint import checkpoint_id
  from paella_jax.lora import save_adapters
  from jax.experimental import multihost_utils
  weights = multihost_utils.process_allgather(exported_weights(state, trainer.config),
                                              tiled=True)
  if jax.process_index() != 0:
    return None
  factors = {"/".join(k): np.asarray(v) for k, v in flatten_dict(weights).items()}
  return save_adapters(path, factors, kind=families.of_model(trainer.model).kind,
                       spec=trainer.lora,
                       base_id=checkpoint_id(trainer.config.train.init_from))


def export_model(state: TrainState, model, out_dir: str, config) -> str | None:
  """Writes an inference checkpoint (config.kind, paella_v1 by default): the EMA or raw
  params (config.export.weights) in config.export.dtype. Every process takes part in
  gathering the sharded params; process 0 writes."""
  weights = exported_weights(state, config)
  dtype = jnp.dtype(config.export.dtype)
  weights = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                    out_shardings=jax.sharding.NamedSharding(
                        jax.tree.leaves(weights)[0].sharding.mesh, jax.sharding.PartitionSpec()
                    ))(weights)
  if jax.process_index() != 0:
    return None
  return save_model(out_dir, weights, families.of_config(config).kind, model.architecture(),
                    meta={"latent_shape": list(config.latent_shape),
                          "sampling": config.sampling.to_dict(),
                          "weights": config.export.weights, "dtype": config.export.dtype,
                          **{key: config.export[key] for key in
                             ("byt5_checkpoint", "clip_checkpoint", "vqgan_checkpoint")
                             if config.export.get(key)}},
                    overwrite=True)


def _progress(start: int, total: int, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
