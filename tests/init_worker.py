"""Run by tests/test_init_from_shapes.py with 8 fake CPU devices: the trainer's state built from
shapes against the whole-model jit of `init_state` it replaces (same tree, shardings, values)."""

import json
import sys

import jax
import numpy as np

from paella_jax.training.partition import Trainer
from paella_jax.training.step import init_state
from paella_jax.configs import tiny, tiny_v3


def compare(config) -> dict:
  trainer = Trainer.create(config)
  rng = jax.random.key(7)
  new = trainer.init(rng)
  old = jax.jit(lambda key: init_state(trainer.model, trainer.optimizer, key,
                                       tuple(config.latent_shape),
                                       ema=config.train.ema_decay > 0),
                out_shardings=trainer.state_shardings)(rng)
  pairs = list(zip(jax.tree.leaves(new), jax.tree.leaves(old)))
  data = lambda a: np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(
      a.dtype, jax.dtypes.prng_key) else a, np.float64)
  return dict(
      same_tree=jax.tree.structure(new) == jax.tree.structure(old),
      same_shardings=all(a.sharding == b.sharding for a, b in pairs),
      sharded_leaves=sum(not a.sharding.is_fully_replicated for a, _ in pairs),
      max_difference=max(float(np.max(np.abs(data(a) - data(b)))) for a, b in pairs if a.size),
      leaves=len(pairs))


if __name__ == "__main__":
  configs = {"v1": tiny.get_config(), "v3": tiny_v3.get_config()}
  for config in configs.values():
    config.mesh.shape = (2, 4, 1)  # data x fsdp: parameters sharded over 4 devices
    config.train.ema_decay = 0.99
  print("RESULT " + json.dumps({name: compare(c) for name, c in configs.items()}))
  sys.stdout.flush()
