"""Runs in a subprocess with N fake CPU devices (XLA_FLAGS set by the caller); prints JSON.

    python -m tests.scale_worker sharding
    python -m tests.scale_worker train WORKDIR STEPS [MESH_SHAPE] [OVERRIDES_JSON]
"""

import json
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


def run_steps(config, devices, batches):
  from paella_jax.sharding import global_batch
  from paella_jax.training.partition import Trainer
  trainer = Trainer.create(config, devices)
  state = trainer.init()
  losses = []
  for batch in batches:
    state, metrics = trainer.step(state, global_batch(batch, trainer.batch_sharding, 16))
    losses.append(float(metrics["loss"]))
  return trainer, state, losses


def sharding():
  """data=2 x fsdp=4: the shardings produced, and 3 steps equal to one device's."""
  from flax import linen as nn
  config = tiny_config(3, (2, 4, 1), ema_decay=0.9, grad_accum_steps=2)
  rng = np.random.default_rng(0)
  batches = [{"tokens": rng.integers(0, 64, (16, 8, 8)).astype(np.int32),
              "clip": rng.normal(size=(16, 32)).astype(np.float32)} for _ in range(3)]
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
