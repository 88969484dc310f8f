"""Activation sharding, tensor parallelism, remat and multi-slice meshes of the train step.

Multi-device checks run `tests.scale_worker` in subprocesses with 8 fake CPU devices.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paella_jax.models.paella import build_model, init_params
from paella_jax.sharding import make_mesh, with_logical_rules
from tests.conftest import ROOT
from tests.scale_worker import tiny_config
from tests.test_scale import worker


@pytest.mark.slow
def test_remat_changes_neither_outputs_nor_gradients():
  config = tiny_config(1)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 8, 8)), jnp.int32)
  clip, r = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32), jnp.array([0.3, 0.8])
  params = init_params(build_model(config.model), jax.random.key(0), (8, 8))

  def loss_and_grads(remat):
    model = build_model(dict(config.model, remat=remat))
    loss = lambda p: jnp.mean(model.apply({"params": p}, tokens, clip, r) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads("none")
  for remat in ("block", "dots"):
    other_loss, other_grads = loss_and_grads(remat)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match="remat must be"):
    build_model(dict(config.model, remat="all")).init(jax.random.key(0), tokens, clip, r)


def test_activation_constraints_follow_the_rules_in_context():
  """Outside `with_logical_rules` the model's constraints are no-ops; inside, they place the
  activations: the traced model carries sharding constraints on the batch axis."""
  config = tiny_config(1)
  model = build_model(config.model)
  params = init_params(model, jax.random.key(0), (8, 8))
  args = (jnp.zeros((2, 8, 8), jnp.int32), jnp.zeros((2, 32)), jnp.zeros((2,)))
  apply = lambda p, *a: model.apply({"params": p}, *a)
  plain = str(jax.make_jaxpr(apply)(params, *args))
  mesh = make_mesh(config.mesh, jax.devices()[:1])
  ruled = str(jax.make_jaxpr(with_logical_rules(apply, mesh, config.sharding.rules))(params, *args))
  assert "sharding_constraint" not in plain
  assert ruled.count("sharding_constraint") >= 2 + sum(config.model.down_levels) + sum(
      config.model.up_levels)
  assert "('data', 'fsdp')" in ruled


@pytest.mark.slow
def test_meshes_equal_one_device_with_and_without_remat():
  """data x fsdp, pure fsdp and data x fsdp x tensor: 3 steps give one device's losses."""
  r = worker(8, "meshes")
  reference = r.pop("1 device")
  assert len(r) == 6 and len(reference) == 3 and reference[-1] < reference[0]
  for name, losses in r.items():
    np.testing.assert_allclose(losses, reference, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_compiled_step_keeps_activations_split_over_the_batch():
  """The partitioned HLO of the step holds the 8x8 activations with the per-device batch only,
  never all 16 rows or the 8 of one data shard: 16 / (2 x 4) = 2 rows on (2, 4, 1); on
  (2, 2, 2) 16 / 4 = 4 rows, and the MLP's hidden units (4 x 32 = 128) split over tensor: 64
  per device. Remat adds recomputation FLOPs."""
  r = worker(8, "compiled")
  fsdp, tp = r["(2, 4, 1) none"]["nhwc"], r["(2, 2, 2) none"]["nhwc"]
  for nhwc in (fsdp, tp):
    assert not {s.split("x")[0] for s in nhwc} & {"16", "8"}, nhwc
  assert "2x128" in fsdp and "2x32" in fsdp
  assert "4x64" in tp and "4x128" not in tp
  flops = {remat: r[f"(2, 4, 1) {remat}"]["flops"] for remat in ("none", "dots", "block")}
  assert flops["none"] < flops["dots"] < flops["block"] < 1.6 * flops["none"]


@pytest.mark.slow
def test_checkpoint_restores_onto_other_meshes(tmp_path):
  """Saved on (2, 2, 2), restored onto (1, 8, 1) and (2, 4, 1): same values, new shardings,
  and the next step's loss equals that of the run that stayed on (2, 2, 2)."""
  r = worker(8, "restore", tmp_path)
  assert r["saved_spec"] == "P('fsdp', 'tensor')"
  for shape, fsdp in (("(1, 8, 1)", 8), ("(2, 4, 1)", 4)):
    restored = r[shape]
    assert restored["spec"] == "P('fsdp', 'tensor')" and restored["step"] == 2
    assert restored["shard"] == [32 // fsdp, 128] and restored["data"] == {"position": 2}
    assert restored["max_param_diff"] == 0.0
    np.testing.assert_allclose(restored["loss"], r["loss"], atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install 'jax[tpu]')")
def test_aot_two_slices_data_parallel_across_fsdp_and_tensor_within():
  out = subprocess.run([sys.executable, "-m", "paella_jax.commands.aot", "--config", "configs/tiny.py",
                        "--topology", "v5e:2x2", "--num-slices", "2", "--global-batch", "32",
                        "--config.mesh.shape=(1,2,2)", "--config.mesh.dcn_shape=(2,1,1)",
                        "--config.model.remat=block"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "8 x TPU v5 lite" in out.stdout and "FITS" in out.stdout
  assert "{'data': 2, 'fsdp': 2, 'tensor': 2}, remat block" in out.stdout
  assert "TPU_WORKER_HOSTNAMES" not in out.stderr and "host bounds" not in out.stderr


def test_dimensions_a_mesh_axis_does_not_divide_stay_whole(caplog):
  """fsdp=8 over abstract TPU devices: a 12-wide dimension stays whole, a 16-wide one splits."""
  import ml_collections
  from flax import linen as nn
  from jax.sharding import PartitionSpec as P
  from paella_jax.aot import tpu_devices
  from paella_jax.sharding import logical_shardings
  mesh = make_mesh(ml_collections.ConfigDict({"shape": (1, -1, 2)}), tpu_devices("v5e:4x4"))
  leaf = lambda *shape: nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32),
                                       names=("embed", "mlp"))
  rules = (("embed", "fsdp"), ("mlp", "tensor"))
  shardings = logical_shardings({"splits": leaf(16, 6), "whole": leaf(12, 6),
                                 "odd": leaf(16, 3)}, mesh, rules)
  assert shardings["splits"].spec == P("fsdp", "tensor")
  assert shardings["whole"].spec == P(None, "tensor")
  assert shardings["odd"].spec == P("fsdp", None)
  assert "2 arrays" in caplog.text
