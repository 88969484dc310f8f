"""Parameters drawn from shapes (paella_jax/init_from_shapes.py) against the whole-model jit of
the initialisers they replace."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.init_from_shapes import init_from_shapes
from paella_jax.models.paella import build_model, init_params
from paella_jax.configs import tiny
from tests.conftest import ROOT
from tests.test_scale import env


def test_values_are_the_initialisers_own():
  model = build_model(tiny.get_config().model)
  init = lambda key: init_params(model, key, (8, 8))
  key = jax.random.key(3)
  expected, drawn = jax.jit(init)(key), init_from_shapes(init, key)
  assert jax.tree.structure(drawn) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(expected)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, atol=1e-7)
  other = init_from_shapes(init, jax.random.key(4))
  assert not np.array_equal(other["clf"]["kernel"], drawn["clf"]["kernel"])


def test_statistics_per_leaf_follow_each_initialiser():
  """A module whose leaves are large enough for their statistics: lecun-normal kernels
  (truncated normal, variance 1 / fan_in), zero biases, ones, a normal(0.02) embedding."""

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(512)(x)
      x = nn.LayerNorm()(x)
      return x + self.param("table", nn.initializers.normal(0.02), (512,))

  init = lambda key: Net().init(key, jnp.zeros((1, 256)))["params"]
  params = init_from_shapes(init, jax.random.key(0))
  kernel = np.asarray(params["Dense_0"]["kernel"])
  assert kernel.shape == (256, 512)
  assert abs(kernel.mean()) < 2e-3 and abs(kernel.var() * 256 - 1) < 0.03
  assert np.abs(kernel).max() <= 2 / np.sqrt(256) / 0.8796 + 1e-6  # truncated at 2 sigma
  assert not np.any(params["Dense_0"]["bias"])
  np.testing.assert_array_equal(params["LayerNorm_0"]["scale"], 1.0)
  assert abs(np.std(params["table"]) - 0.02) < 0.003


def test_trainer_state_has_the_jit_inits_tree_shardings_and_values():
  """8 fake devices, mesh (data 2, fsdp 4): v1 and v3 states, EMA included."""
  out = subprocess.run([sys.executable, "-m", "tests.init_worker"], cwd=ROOT, env=env(8),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.split("RESULT ", 1)[1])
  for name, r in results.items():
    assert r["same_tree"] and r["same_shardings"], (name, r)
    assert r["sharded_leaves"] > 0, (name, r)  # the fsdp axis really splits parameters
    assert r["max_difference"] < 1e-6, (name, r)
