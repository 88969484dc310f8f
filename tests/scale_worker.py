"""Runs in a subprocess with N fake CPU devices (XLA_FLAGS set by the caller); prints JSON.

    python -m tests.scale_worker sharding
    python -m tests.scale_worker meshes
    python -m tests.scale_worker compiled
    python -m tests.scale_worker restore WORKDIR
    python -m tests.scale_worker train WORKDIR STEPS [MESH_SHAPE] [OVERRIDES_JSON]
"""

import json
import re
import sys

import jax
import numpy as np

from configs import tiny


def tiny_config(steps, mesh_shape=(-1, 1, 1), **train):
  config = tiny.get_config()
  config.train.update(total_steps=steps, log_every=2, checkpoint_every=4, warmup_steps=3,
                      **train)
  config.mesh.shape = tuple(mesh_shape)
  return config


def random_batches(n, batch_size=16):
  rng = np.random.default_rng(0)
  return [{"tokens": rng.integers(0, 64, (batch_size, 8, 8)).astype(np.int32),
           "clip": rng.normal(size=(batch_size, 32)).astype(np.float32)} for _ in range(n)]


def run_steps(config, devices, batches, state=None):
  from paella_jax.sharding import global_batch
  from paella_jax.training.partition import Trainer
  trainer = Trainer.create(config, devices)
  state = trainer.init() if state is None else state
  losses = []
  for batch in batches:
    state, metrics = trainer.step(state, global_batch(batch, trainer.batch_sharding, 16))
    losses.append(float(metrics["loss"]))
  return trainer, state, losses


def sharding():
  """data=2 x fsdp=4: the shardings produced, and 3 steps equal to one device's."""
  from flax import linen as nn
  config = tiny_config(3, (2, 4, 1), ema_decay=0.9, grad_accum_steps=2)
  batches = random_batches(3)
  trainer, state, losses = run_steps(config, jax.devices(), batches)
  config1 = tiny_config(3, (1, 1, 1), ema_decay=0.9, grad_accum_steps=2)
  _, state1, losses1 = run_steps(config1, jax.devices()[:1], batches)
  kernel = state.params["down_0_block_0"]["mlp_in"]["kernel"]          # ("embed", "mlp")
  mu = state.opt_state[1][0].mu["down_0_block_0"]["mlp_in"]["kernel"]
  ema = state.ema_params["down_0_block_0"]["mlp_in"]["kernel"]
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                      (state.params, state.ema_params), (state1.params, state1.ema_params))
  bf16 = tiny_config(1, (2, 4, 1))
  bf16.model.dtype = "bfloat16"
  _, state_bf16, loss_bf16 = run_steps(bf16, jax.devices(), batches[:1])
  return {
      "mesh": dict(trainer.mesh.shape),
      "kernel_spec": str(kernel.sharding.spec), "kernel_shape": kernel.shape,
      "kernel_shard": kernel.sharding.shard_shape(kernel.shape),
      "mu_spec": str(mu.sharding.spec), "ema_spec": str(ema.sharding.spec),
      "batch_spec": str(trainer.batch_sharding.spec),
      "losses": losses, "losses_1device": losses1, "max_param_diff": max(jax.tree.leaves(diff)),
      "bf16_param_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(state_bf16.params)}),
      "bf16_loss": loss_bf16[0],
      "logical_names": sorted({n for s in jax.tree.leaves(
          nn.get_partition_spec(jax.eval_shape(lambda: trainer.model.init(
              jax.random.key(0), np.zeros((1, 8, 8), np.int32), np.zeros((1, 32)),
              np.zeros((1,))))), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
          for n in s if n})}


MESHES = ((2, 4, 1), (1, 8, 1), (2, 2, 2))


def meshes():
  """Losses of 3 steps on one device, and on each mesh of MESHES with remat "none" / "block"."""
  batches = random_batches(3)
  out = {"1 device": run_steps(tiny_config(3, (1, 1, 1)), jax.devices()[:1], batches)[2]}
  for shape in MESHES:
    for remat in ("none", "block"):
      config = tiny_config(3, shape)
      config.model.remat = remat
      out[f"{shape} {remat}"] = run_steps(config, jax.devices(), batches)[2]
  return out


def compiled():
  """The first and last dimensions ("BxC") of every f32 (B, 8, 8, C) array in the compiled
  step's HLO (per-device shapes after partitioning), with the step's temporaries and FLOPs per
  device: mesh (2, 4, 1) with each remat policy, and (2, 2, 2) without."""
  from paella_jax.training.partition import Trainer
  out = {}
  for shape, remat in [((2, 4, 1), r) for r in ("none", "block", "dots")] + [((2, 2, 2), "none")]:
    config = tiny_config(1, shape)
    config.model.remat = remat
    step = Trainer.create(config, jax.devices()).compile(16)
    arrays = re.findall(r"f32\[(\d+),8,8,(\d+)\]", step.as_text())
    out[f"{shape} {remat}"] = {"nhwc": sorted({f"{b}x{c}" for b, c in arrays}),
                               "temp_bytes": step.memory_analysis().temp_size_in_bytes,
                               "flops": step.cost_analysis()["flops"]}
  return out


def restore(workdir):
  """A state trained 2 steps on mesh (2, 2, 2), saved, restored onto (1, 8, 1) and (2, 4, 1):
  the restored shardings and params, and one more step's loss on each mesh."""
  from paella_jax.training.checkpointing import (checkpoint_manager, restore_checkpoint,
                                                 save_checkpoint)
  from paella_jax.training.partition import Trainer
  batches = random_batches(3)
  config = tiny_config(3, (2, 2, 2))
  trainer, state, _ = run_steps(config, jax.devices(), batches[:2])
  manager = checkpoint_manager(workdir, config)
  save_checkpoint(manager, state, {"position": 2}, force=True)
  manager.wait_until_finished()
  saved = jax.tree.map(np.asarray, state.params)
  _, _, (loss,) = run_steps(config, jax.devices(), batches[2:], state)
  out = {"saved_spec": str(state.params["down_0_block_0"]["mlp_in"]["kernel"].sharding.spec),
         "loss": loss}
  for shape in ((1, 8, 1), (2, 4, 1)):
    other = tiny_config(3, shape)
    restored, data = restore_checkpoint(checkpoint_manager(workdir, other),
                                        Trainer.create(other, jax.devices()).abstract_state())
    kernel = restored.params["down_0_block_0"]["mlp_in"]["kernel"]
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                        restored.params, saved)
    out[str(shape)] = {"spec": str(kernel.sharding.spec),
                       "shard": kernel.sharding.shard_shape(kernel.shape),
                       "max_param_diff": max(jax.tree.leaves(diff)), "data": data,
                       "step": int(restored.step)}
    out[str(shape)]["loss"] = run_steps(other, jax.devices(), batches[2:], restored)[2][0]
  return out


def train(workdir, steps, mesh_shape="[-1, 1, 1]", overrides="{}"):
  from paella_jax.training.loop import train as run
  config = tiny_config(int(steps), json.loads(mesh_shape))
  for key, value in json.loads(overrides).items():
    section, field = key.split(".")
    config[section][field] = value
  state = run(config, workdir, progress=False)
  return {"step": int(state.step), "devices": jax.device_count()}


if __name__ == "__main__":
  print("RESULT " + json.dumps(globals()[sys.argv[1]](*sys.argv[2:]), default=str))
