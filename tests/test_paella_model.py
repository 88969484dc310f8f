"""The Flax DenoiseUNet and its converter against the original PyTorch model."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from paella_jax.checkpoint import load_model
from paella_jax.convert import paella_v1_from_torch
from paella_jax.convert.paella import key_map
from paella_jax.convert.torch_io import CheckpointMismatchError
from paella_jax.models.paella import build_model, count_params
from tests.conftest import ROOT
from tests.torch_reference import ReferenceUNet

TOL = 1e-4


def nchw_to_nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def tiny(reference_dir):
  io = dict(np.load(reference_dir / "paella_v1_tiny_io.npz"))
  model, params = paella_v1_from_torch(reference_dir / "paella_v1_tiny.pt")
  return model, params, io


def test_fixture_parity_pooled(tiny):
  model, params, io = tiny
  assert model.architecture() == dict(num_labels=64, c_hidden=64, c_clip=32, c_r=64,
                                      down_levels=[1, 2, 2], up_levels=[2, 2, 1])
  logits = model.apply({"params": params}, jnp.asarray(io["x"]), jnp.asarray(io["c"]),
                       jnp.asarray(io["r"]))
  assert logits.shape == (2, 8, 8, 64) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, nchw_to_nhwc(io["logits"]), atol=TOL, rtol=0)


def test_converted_model_samples(tiny):
  from paella_jax.sampling import sample
  model, params, io = tiny
  codes = sample(model, params, io["c"], jax.random.key(0), steps=2, latent_shape=(8, 8))
  assert codes.shape == (2, 8, 8)


def test_fixture_parity_spatial(tiny):
  model, params, io = tiny
  logits = model.apply({"params": params}, jnp.asarray(io["x"]),
                       jnp.asarray(nchw_to_nhwc(io["c_map"])), jnp.asarray(io["r"]))
  np.testing.assert_allclose(logits, nchw_to_nhwc(io["logits_map"]), atol=TOL, rtol=0)


def test_torch_reference_matches_original_fixture(reference_dir):
  """The test-side reference reproduces the original's outputs, so it can stand in for it."""
  io = np.load(reference_dir / "paella_v1_tiny_io.npz")
  ref = ReferenceUNet(64, 64, 32, 64, [1, 2, 2], [2, 2, 1])
  ref.load_state_dict(torch.load(reference_dir / "paella_v1_tiny.pt", weights_only=True))
  with torch.no_grad():
    out = ref(torch.tensor(io["x"]), torch.tensor(io["c_map"]), torch.tensor(io["r"]))
  np.testing.assert_allclose(out.numpy(), io["logits_map"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,latent,clip_map", [
    # two levels, odd c_r, non-square latent, pooled conditioning
    (dict(num_labels=40, c_hidden=48, c_clip=24, c_r=33, down_levels=[2, 1], up_levels=[1, 2]),
     (6, 10), None),
    # four levels, a spatial map smaller than the latent and non-square
    (dict(num_labels=32, c_hidden=64, c_clip=16, c_r=16, down_levels=[1, 1, 1, 2],
          up_levels=[2, 1, 1, 1]), (16, 24), (3, 5)),
    # one level (no resampling), a spatial map larger than the latent
    (dict(num_labels=16, c_hidden=16, c_clip=8, c_r=32, down_levels=[2], up_levels=[1]),
     (5, 7), (9, 11)),
])
def test_parity_other_configurations(arch, latent, clip_map):
  torch.manual_seed(0)
  ref = ReferenceUNet(**arch).eval()
  with torch.no_grad():  # random values everywhere, so that every path shows in the output
    for p in ref.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  rng = np.random.default_rng(1)
  x = rng.integers(0, arch["num_labels"], (2, *latent))
  c_shape = (2, arch["c_clip"]) if clip_map is None else (2, arch["c_clip"], *clip_map)
  c = rng.standard_normal(c_shape).astype(np.float32)
  r = np.array([0.1, 0.7], np.float32)
  with torch.no_grad():
    expected = ref(torch.tensor(x), torch.tensor(c), torch.tensor(r)).numpy()
  model, params = paella_v1_from_torch(ref.state_dict(), c_r=arch["c_r"])
  assert model.architecture() == arch
  c_jax = c if clip_map is None else c.transpose(0, 2, 3, 1)
  logits = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(c_jax), jnp.asarray(r))
  scale = max(1.0, np.abs(expected).max())
  np.testing.assert_allclose(np.asarray(logits) / scale, nchw_to_nhwc(expected) / scale,
                             atol=TOL, rtol=0)


def test_paper_config_parameter_count_and_keys():
  cfg = dict(num_labels=8192, c_hidden=1280, c_clip=1024, c_r=64, down_levels=[4, 8, 16],
             up_levels=[16, 8, 4])
  model = build_model(cfg)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32), jnp.int32),
                            jnp.zeros((1, 1024)), jnp.zeros((1,)))
  assert count_params(abstract["params"]) == 577_995_184
  assert len(key_map(model)) == 739  # the released checkpoint's key count


def test_converter_names_mismatching_keys_and_shapes(tiny, reference_dir):
  sd = torch.load(reference_dir / "paella_v1_tiny.pt", weights_only=True)
  broken = dict(sd)
  broken["up_blocks.0.0.channelwise.0.weight"] = torch.zeros(3, 3)
  del broken["clf.bias"]
  broken["extra.weight"] = torch.zeros(1)
  with pytest.raises(CheckpointMismatchError) as err:
    paella_v1_from_torch(broken)
  msg = str(err.value)
  assert "clf.bias" in msg and "extra.weight" in msg
  assert "up_blocks.0.0.channelwise.0.weight: checkpoint (3, 3)" in msg
  with pytest.raises(CheckpointMismatchError, match="not a Paella v1"):
    paella_v1_from_torch({"encoder.conv_in.weight": torch.zeros(1)})


def test_converter_rejects_truncated_and_missing_files(tmp_path, reference_dir):
  data = (reference_dir / "paella_v1_tiny.pt").read_bytes()
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated"):
    paella_v1_from_torch(truncated)
  with pytest.raises(FileNotFoundError):
    paella_v1_from_torch(tmp_path / "nope.pt")


def test_bad_inputs_give_clear_errors(tiny):
  model, params, io = tiny
  x, c, r = jnp.asarray(io["x"]), jnp.asarray(io["c"]), jnp.asarray(io["r"])
  apply = lambda *a: model.apply({"params": params}, *a)
  with pytest.raises(ValueError, match="integer"):
    apply(x.astype(jnp.float32), c, r)
  with pytest.raises(ValueError, match=r"\(B, h, w\)"):
    apply(x[0], c, r)
  with pytest.raises(ValueError, match="clip must be"):
    apply(x, c[:, :10], r)
  with pytest.raises(ValueError, match="batch sizes differ"):
    apply(x, c[:1], r)
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    apply(x.at[0, 0, 0].set(64), c, r)
  with pytest.raises(ValueError, match="divisible by 4"):
    apply(x[:, :6, :6], c, r)
  with pytest.raises(ValueError, match="at least 8"):
    apply(x[:, :4, :4], c, r)


def test_cli_converts_to_a_checkpoint_that_loads(tmp_path, tiny, reference_dir):
  out = tmp_path / "paella"
  subprocess.run([sys.executable, "-m", "paella_jax.convert", "paella-v1",
                  str(reference_dir / "paella_v1_tiny.pt"), str(out)], check=True, cwd=ROOT)
  kind, config, params = load_model(out)
  model, ref_params, io = tiny
  assert kind == "paella_v1" and config == model.architecture()
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  with pytest.raises(subprocess.CalledProcessError):
    subprocess.run([sys.executable, "-m", "paella_jax.convert", "paella-v1",
                    str(reference_dir / "paella_v1_tiny.pt"), str(out)], check=True, cwd=ROOT,
                   capture_output=True)


def test_bf16_compute_stays_close_to_fp32(tiny):
  model, params, io = tiny
  bf16 = model.clone(dtype=jnp.bfloat16)
  args = (jnp.asarray(io["x"]), jnp.asarray(io["c"]), jnp.asarray(io["r"]))
  full = model.apply({"params": params}, *args)
  half = bf16.apply({"params": params}, *args)
  assert half.dtype == jnp.float32
  rel = float(jnp.abs(half - full).max() / jnp.abs(full).max())
  assert rel < 0.05, rel
