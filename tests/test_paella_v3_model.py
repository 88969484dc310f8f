"""The Flax Paella v3 predictor and its converter against the original PyTorch model."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from paella_jax.checkpoint import load_model
from paella_jax.convert import paella_v3_from_torch
from paella_jax.convert.torch_io import CheckpointMismatchError
from paella_jax.models.paella import count_params
from paella_jax.models.paella_v3 import build_model, init_params
from tests.conftest import ROOT
from tests.torch_reference_v3 import ReferenceV3

TOL = 1e-4
CONDITIONINGS = {"all": ("clip", "clip_image"), "text": ("clip",), "byt5": ()}


def nchw_to_nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def fixture_config(io):
  config = eval(str(io["config"]), {})  # a dict literal written by the fixture's script
  config.pop("dropout")
  return config


@pytest.fixture(scope="module")
def tiny(reference_dir):
  io = dict(np.load(reference_dir / "paella_v3_tiny_io.npz"))
  model, params = paella_v3_from_torch(reference_dir / "paella_v3_tiny.pt", nhead=[-1, 4, 4])
  return model, params, io


@pytest.mark.parametrize("which", sorted(CONDITIONINGS))
def test_fixture_parity(tiny, which):
  model, params, io = tiny
  assert model.architecture() == dict(fixture_config(io), c_hidden=[16, 32, 32],
                                      nhead=[-1, 4, 4], blocks=[1, 2, 1],
                                      level_config=["CT", "CTA", "CTA"])
  extra = {k: jnp.asarray(io[k]) for k in CONDITIONINGS[which]}
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(io["x"]), jnp.asarray(io["r"]),
                                jnp.asarray(io["byt5"]), **extra)
  assert logits.shape == (2, 16, 16, 64) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, nchw_to_nhwc(io[f"logits_{which}"]), atol=TOL, rtol=0)


def test_torch_reference_matches_original_fixture(reference_dir):
  """The test-side reference reproduces the original's outputs, so it can stand in for it."""
  io = np.load(reference_dir / "paella_v3_tiny_io.npz")
  ref = ReferenceV3(**fixture_config(io))
  ref.load_state_dict(torch.load(reference_dir / "paella_v3_tiny.pt", weights_only=True))
  t = lambda k: torch.from_numpy(io[k])
  with torch.no_grad():
    for which, extra in CONDITIONINGS.items():
      out = ref(t("x"), t("r"), t("byt5"), **{k: t(k) for k in extra})
      np.testing.assert_allclose(out.numpy(), io[f"logits_{which}"], atol=1e-5, rtol=0)


BASE = dict(c_in=8, c_out=8, num_labels=48, c_r=16, patch_size=2, c_cond=16,
            c_hidden=[16, 24], nhead=[-1, 4], blocks=[1, 1], level_config=["CT", "CTA"],
            clip_embd=12, byt5_embd=20, clip_seq_len=4, kernel_size=3, self_attn=True)


@pytest.mark.parametrize("arch,latent,inputs", [
    # attention at every level, two blocks per level, odd c_r, non-square latent
    (dict(BASE, c_r=17, nhead=[2, 4], blocks=[2, 1], level_config=["CTA", "CA"]), (8, 12),
     ("byt5", "clip", "clip_image")),
    # F blocks, kernel 5, three levels, CLIP image without CLIP text
    (dict(BASE, c_hidden=[16, 16, 32], nhead=[-1, -1, 8], blocks=[1, 2, 1],
          level_config=["CTF", "CF", "TCAF"], kernel_size=5), (8, 8), ("byt5", "clip_image")),
    # patch size 1, c_in != c_out, attention over the conditioning only, no ByT5
    (dict(BASE, patch_size=1, c_out=12, self_attn=False, clip_seq_len=2), (6, 10),
     ("clip", "clip_image")),
    # one level (no resampling), CLIP text only
    (dict(BASE, c_hidden=[16], nhead=[4], blocks=[2], level_config=["CTA"]), (4, 6), ("clip",)),
])
def test_parity_other_configurations(arch, latent, inputs):
  torch.manual_seed(0)
  ref = ReferenceV3(**arch).eval()
  with torch.no_grad():  # random values everywhere, so that every path shows in the output
    for p in ref.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  rng = np.random.default_rng(1)
  x = rng.integers(0, arch["num_labels"], (2, *latent))
  r = np.array([0.1, 0.7], np.float32)
  cond = {"byt5": rng.standard_normal((2, 5, arch["byt5_embd"])),
          "clip": rng.standard_normal((2, arch["clip_embd"])),
          "clip_image": rng.standard_normal((2, arch["clip_embd"]))}
  cond = {k: v.astype(np.float32) if k in inputs else None for k, v in cond.items()}
  with torch.no_grad():
    expected = ref(torch.tensor(x), torch.tensor(r),
                   **{k: None if v is None else torch.tensor(v) for k, v in cond.items()}).numpy()
  model, params = paella_v3_from_torch(ref.state_dict(), nhead=arch["nhead"],
                                       self_attn=arch["self_attn"])
  assert model.architecture() == arch
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(x), jnp.asarray(r),
                                **{k: None if v is None else jnp.asarray(v)
                                   for k, v in cond.items()})
  scale = max(1.0, np.abs(expected).max())
  np.testing.assert_allclose(np.asarray(logits) / scale, nchw_to_nhwc(expected) / scale,
                             atol=TOL, rtol=0)


ONE_LEVEL = dict(BASE, c_hidden=[16], nhead=[4], blocks=[1], level_config=["CTA"])


@pytest.fixture(scope="module")
def one_level():
  """A small model (one level: few compiles), its fresh params, random params (every path shows
  in the outputs) and inputs."""
  model = build_model(ONE_LEVEL)
  params = jax.jit(lambda k: init_params(model, k, (4, 4)))(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  noisy = tree.unflatten([p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 48, (2, 4, 6)))
  byt5 = jnp.asarray(rng.standard_normal((2, 6, 20)), jnp.float32)
  clip = jnp.asarray(rng.standard_normal((2, 12)), jnp.float32)
  return model, params, noisy, (x, jnp.array([0.9, 0.25]), byt5, clip)


@pytest.mark.parametrize("self_attn", [True, False])
def test_padded_byt5_with_key_mask_equals_the_unpadded_prompt(one_level, self_attn):
  model, _, params, (x, r, byt5, clip) = one_level
  apply = jax.jit(model.clone(self_attn=self_attn).apply)
  # Row 0 keeps its 6 tokens, row 1 only its first 3; both padded to 9 with garbage.
  garbage = jax.random.normal(jax.random.key(0), (2, 9, 20)) * 5
  lengths = np.array([6, 3])
  valid = jnp.arange(9)[None] < lengths[:, None]
  padded = jnp.where(valid[..., None], jnp.pad(byt5, ((0, 0), (0, 3), (0, 0))), garbage)
  out = apply({"params": params}, x, r, padded, clip, byt5_mask=valid)
  alone = apply({"params": params}, x, r, byt5[:, :3], clip)  # row 1's prompt
  np.testing.assert_allclose(out[1], alone[1], atol=TOL, rtol=0)
  reordered = apply({"params": params}, x, r, padded[:, ::-1], clip, byt5_mask=valid[:, ::-1])
  np.testing.assert_allclose(out, reordered, atol=TOL, rtol=0)  # keys form a set
  unmasked = apply({"params": params}, x, r, padded, clip)
  assert float(jnp.abs(unmasked - out).max()) > 1e-2  # the padding does matter without the mask


@pytest.mark.slow
def test_release_config_parameter_count():
  from configs import paella_v3
  model = build_model(paella_v3.get_config().model)
  abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (8, 8)))
  assert count_params(abstract) == 1_008_350_592


def test_logical_axes_on_every_parameter_and_tied_init(one_level):
  tiny_model = build_model(dict(BASE, nhead=[2, 4], level_config=["CTAF", "CTA"]))
  boxed = jax.eval_shape(lambda: init_params(tiny_model, jax.random.key(0), (8, 8), unbox=False))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim
             for leaf in leaves)
  _, params, _, _ = one_level
  np.testing.assert_array_equal(params["out_mapper"]["kernel"], params["in_mapper"]["embedding"].T)
  assert not np.any(params["clf"]["kernel"])
  assert not np.any(params["down_0_block_1"]["mapper"]["kernel"])


def test_remat_bf16_and_hashable(one_level):
  model, _, params, args = one_level
  hash(model)  # a static jit argument
  remat = model.clone(remat="block")
  loss = lambda m: jax.jit(jax.grad(lambda p: jnp.mean(m.apply({"params": p}, *args) ** 2)))
  g_full, g_remat = loss(model)(params), loss(remat)(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g_full, g_remat)
  full = jax.jit(model.apply)({"params": params}, *args)
  half = jax.jit(model.clone(dtype=jnp.bfloat16).apply)({"params": params}, *args)
  assert half.dtype == jnp.float32
  assert float(jnp.abs(half - full).max() / jnp.abs(full).max()) < 0.05


def test_bad_inputs_give_clear_errors(tiny):
  model, params, io = tiny
  x, r, byt5 = jnp.asarray(io["x"]), jnp.asarray(io["r"]), jnp.asarray(io["byt5"])
  apply = lambda *a, **k: model.apply({"params": params}, *a, **k)
  with pytest.raises(ValueError, match="integer"):
    apply(x.astype(jnp.float32), r, byt5)
  with pytest.raises(ValueError, match="divisible by 8"):
    apply(x[:, :12, :12], r, byt5)
  with pytest.raises(ValueError, match="byt5 must be"):
    apply(x, r, byt5[..., :10])
  with pytest.raises(ValueError, match="clip must be"):
    apply(x, r, byt5, clip=jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="byt5_mask"):
    apply(x, r, byt5, byt5_mask=jnp.ones((2, 3), bool))
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    apply(x.at[0, 0, 0].set(64), r, byt5)
  with pytest.raises(ValueError, match="at least one conditioning"):
    model.clone(self_attn=False).apply({"params": params}, x, r, None)


def test_converter_wrappers_and_mismatch_errors(tiny, reference_dir):
  _, params, _ = tiny
  sd = torch.load(reference_dir / "paella_v3_tiny.pt", weights_only=True)
  for wrapped in ({"state_dict": sd}, {f"module.{k}": v for k, v in sd.items()}):
    _, p = paella_v3_from_torch(wrapped, nhead=[-1, 4, 4])
    jax.tree.map(np.testing.assert_array_equal, p, params)
  broken = dict(sd)
  broken["up_blocks.1.2.attention.attn.in_proj_weight"] = torch.zeros(3, 3)
  del broken["clf.1.bias"]
  broken["extra.weight"] = torch.zeros(1)
  with pytest.raises(CheckpointMismatchError) as err:
    paella_v3_from_torch(broken, nhead=[-1, 4, 4])
  msg = str(err.value)
  assert "clf.1.bias" in msg and "extra.weight" in msg
  assert "up_blocks.1.2.attention.attn.in_proj_weight: checkpoint (3, 3) vs model (96, 32)" in msg
  with pytest.raises(CheckpointMismatchError, match="not a Paella v3"):
    paella_v3_from_torch({"embedding.weight": torch.zeros(1)})
  with pytest.raises(CheckpointMismatchError, match="3 levels but nhead"):
    paella_v3_from_torch(sd, nhead=[-1, 4])


def test_cli_converts_to_a_checkpoint_with_v3_sampling_defaults(tmp_path, tiny, reference_dir):
  out = tmp_path / "paella_v3"
  subprocess.run([sys.executable, "-m", "paella_jax.convert", "paella-v3",
                  str(reference_dir / "paella_v3_tiny.pt"), str(out), "--nhead", "-1", "4", "4"],
                 check=True, cwd=ROOT, capture_output=True)
  kind, config, params = load_model(out)
  model, ref_params, _ = tiny
  assert kind == "paella_v3" and config == model.architecture()
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  import json
  meta = json.loads((out / "model.json").read_text())["meta"]
  assert meta["sampling"] == dict(steps=12, temperature=[0.7, 0.3], cfg=[8.0, 8.0],
                                  typical_mass=None, typical_min_tokens=1, renoise_mode="start",
                                  start_step=0, modes={"edit": {"start_step": 4}})
