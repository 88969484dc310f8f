"""The editing modes: pure helpers, and each sample.py subcommand end to end on tiny models."""

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from paella_jax import editing
from paella_jax.checkpoint import load_model
from paella_jax.models.paella import DenoiseUNet, build_model
from paella_jax.sampling import sample


def test_latent_mask_covers_every_touched_patch():
  mask = np.zeros((16, 16))
  mask[5, 9] = 1
  np.testing.assert_array_equal(np.argwhere(editing.latent_mask(mask, 4)), [[1, 2]])
  with pytest.raises(ValueError, match="multiple of the VQGAN factor"):
    editing.latent_mask(np.zeros((10, 16)), 4)
  with pytest.raises(ValueError, match="inside"):
    editing.box_mask(16, 16, (0, 0, 20, 4))


def test_outpaint_on_a_larger_non_square_canvas_keeps_the_pasted_codes(tiny_checkpoints):
  _, config, params = load_model(tiny_checkpoints / "model")
  model = build_model(config)
  codes = np.random.default_rng(0).integers(0, 64, (2, 8, 8))
  tokens, mask = editing.outpaint_canvas(codes, (12, 24), (4, 8))   # bigger than 8x8 training
  assert mask.sum() == 2 * (12 * 24 - 64)
  out = np.asarray(sample(model, params, jnp.ones((2, 32)), jax.random.key(0), init_tokens=tokens,
                          mask=mask, cfg=4.0))
  assert out.shape == (2, 12, 24)
  np.testing.assert_array_equal(out[:, 4:12, 8:16], codes)
  np.testing.assert_array_equal(out[mask == 0], tokens[mask == 0])
  with pytest.raises(ValueError, match="smaller"):
    editing.outpaint_canvas(codes, (6, 24), (0, 0))
  with pytest.raises(ValueError, match="outside"):
    editing.outpaint_canvas(codes, (12, 12), (0, 8))


def test_edit_from_the_last_step_returns_the_input_codes(tiny_checkpoints):
  _, config, params = load_model(tiny_checkpoints / "model")
  model = build_model(config)
  codes = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 8, 8)), jnp.int32)
  noised = editing.noise_for_edit(jax.random.key(0), codes, 24, 24, 64)
  np.testing.assert_array_equal(noised, codes)   # noise level cos(pi / 2) = 0
  out = sample(model, params, jnp.ones((2, 32)), jax.random.key(0), steps=24, start_step=24,
               init_tokens=noised, renoise_mode="prev")
  np.testing.assert_array_equal(out, codes)
  half = editing.noise_for_edit(jax.random.key(0), codes, 12, 24, 64)
  assert 0.5 < float((half != codes).mean()) < 0.9   # cos(pi/4) = 0.71 replaced (some by equal codes)


def test_interpolation_endpoints_are_the_prompt_embeddings():
  emb = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)
  for mode in ("lerp", "slerp"):
    path = editing.interpolation_path(emb, 9, mode)
    np.testing.assert_array_equal(path[0], emb[0])
    np.testing.assert_array_equal(path[4], emb[1])
    np.testing.assert_array_equal(path[-1], emb[2])
    mid = editing.interpolate(emb[0], emb[1], np.array([0.5]), mode)[0]
    if mode == "slerp":  # the norm moves linearly, the direction along the great circle
      assert np.linalg.norm(mid) == pytest.approx(
          (np.linalg.norm(emb[0]) + np.linalg.norm(emb[1])) / 2, rel=1e-5)
    else:
      np.testing.assert_allclose(mid, (emb[0] + emb[1]) / 2, rtol=1e-6)


def test_multi_conditioning_map_reaches_the_model_at_latent_size(monkeypatch):
  emb = np.eye(2, 8, dtype=np.float32)
  labels = editing.region_labels((8, 16), 2, "columns")
  cmap = editing.conditioning_map(emb, labels, blend=1.0)
  assert cmap.shape == (8, 16, 8)
  np.testing.assert_allclose(cmap[:, 0], np.broadcast_to(emb[0], (8, 8)), atol=1e-6)
  np.testing.assert_allclose(cmap[:, -1], np.broadcast_to(emb[1], (8, 8)), atol=1e-6)
  assert 0 < cmap[0, 7, 0] < 1  # soft border
  hard = editing.conditioning_map(emb, labels, blend=0)
  np.testing.assert_array_equal(hard[:, 7], np.broadcast_to(emb[0], (8, 8)))
  # The first level takes the map as it is; only the coarser level resizes it (to 4x8).
  from paella_jax.models import paella
  resized = []
  original = paella._bilinear_matrix.__wrapped__
  monkeypatch.setattr(paella, "_bilinear_matrix",
                      lambda out, size: resized.append((out, size)) or original(out, size))
  model = DenoiseUNet(num_labels=16, c_hidden=16, c_clip=8, c_r=8, down_levels=(1, 1),
                      up_levels=(1, 1))
  tokens = jnp.zeros((1, 8, 16), jnp.int32)
  params = model.init(jax.random.key(0), tokens, jnp.asarray(cmap[None]), jnp.zeros((1,)))
  model.apply(params, tokens, jnp.asarray(cmap[None]), jnp.zeros((1,)))
  assert set(resized) == {(4, 8), (8, 16)}  # rows 8 -> 4 and columns 16 -> 8, nothing else
  with pytest.raises(ValueError, match="label map"):
    editing.conditioning_map(emb, labels + 1)


def run_sample(*args):
  """paella-sample's main in this process (compiled programs are reused between calls)."""
  from paella_jax.commands.sample import main
  return main([str(a) for a in args])


@pytest.fixture(scope="module")
def image(tiny_checkpoints):
  path = tiny_checkpoints / "input.png"
  pixels = np.full((32, 32, 3), 235, np.uint8)
  pixels[4:14, 18:28] = (220, 20, 20)
  Image.fromarray(pixels).save(path)
  return path


@pytest.mark.slow  # minutes on 2 cores: CI runs it in the slow tier
def test_every_subcommand_writes_images_and_sidecars(tiny_checkpoints, image, tmp_path):
  model = tiny_checkpoints / "model"
  cases = {
      "inpaint": ["--image", image, "--box", 0, 0, 16, 16, "--prompt", "a red circle"],
      "outpaint": ["--image", image, "--canvas", 32, 64, "--offset", 0, 16, "--prompt", "x"],
      "edit": ["--image", image, "--prompt", "a blue square", "--start-step", 8],
      "vary": ["--image", image],
      "interpolate": ["--prompt", "a red circle", "--prompt", "a blue square", "--frames", 3],
      "multi": ["--prompt", "a", "--prompt", "b", "--layout", "rows"],
  }
  for command, extra in cases.items():
    out = tmp_path / command
    run_sample(command, "--checkpoint", model, "--batch-size", 2, "--out", out, *extra)
    sidecar = json.load(open(out / "0001.json"))
    assert sidecar["command"] == command
    assert (out / "grid.png").is_file()
  assert json.load(open(tmp_path / "inpaint" / "0000.json"))["sampler"]["cfg"] == 6.0
  assert json.load(open(tmp_path / "outpaint" / "0000.json"))["sampler"]["cfg"] == 4.0
  edit = json.load(open(tmp_path / "edit" / "0000.json"))["sampler"]
  assert (edit["steps"], edit["start_step"], edit["renoise_mode"]) == (24, 8, "prev")
  assert np.load(tmp_path / "outpaint" / "codes.npy").shape == (2, 8, 16)
  inpainted = np.load(tmp_path / "inpaint" / "codes.npy")
  np.testing.assert_array_equal(inpainted[:, 4:, :], np.load(tmp_path / "outpaint" /
                                                             "codes.npy")[:, 4:, 4:12])
  assert (tmp_path / "interpolate" / "interpolation.gif").is_file()


def test_sidecar_regenerates_its_image_bit_for_bit(tiny_checkpoints, tmp_path):
  first, again = tmp_path / "first", tmp_path / "again"
  run_sample("generate", "--checkpoint", tiny_checkpoints / "model", "--prompt", "a red circle",
             "--seed", 7, "--cfg", 3, "--out", first)
  run_sample("replay", first / "0002.json", "--out", again)
  assert (first / "0002.png").read_bytes() == (again / "0002.png").read_bytes()
  np.testing.assert_array_equal(np.load(first / "codes.npy"), np.load(again / "codes.npy"))
  other = tmp_path / "other"
  run_sample("generate", "--checkpoint", tiny_checkpoints / "model", "--prompt", "a red circle",
             "--seed", 8, "--cfg", 3, "--out", other)
  assert not np.array_equal(np.load(first / "codes.npy"), np.load(other / "codes.npy"))
  # a sidecar written when sidecars recorded paella-sample's arguments instead of the request
  new = json.load(open(first / "0002.json"))
  legacy = {k: new[k] for k in ("command", "sampler", "sampler_version", "kind", "checkpoint_id",
                                "clip_checkpoint", "vqgan_checkpoint", "byt5_checkpoint",
                                "index", "label")}
  legacy.update(negative_prompt=None, args=dict(
      command="generate", checkpoint=new["checkpoint"], clip=None, vqgan=None, byt5=None,
      negative_prompt=None, batch_size=4, seed=7, steps=None, start_step=None, cfg=3.0,
      typical_mass=None, typical_min_tokens=None, temperature=None, renoise_mode=None,
      prompt=["a red circle"], embeddings=None, latent_shape=None))
  (tmp_path / "legacy.json").write_text(json.dumps(legacy))
  run_sample("replay", tmp_path / "legacy.json", "--out", tmp_path / "legacy")
  assert (first / "0002.png").read_bytes() == (tmp_path / "legacy" / "0002.png").read_bytes()
  old = dict(legacy)
  del old["sampler_version"]  # written before versions were recorded: version 1
  (tmp_path / "old.json").write_text(json.dumps(old))
  with pytest.raises(ValueError, match="sampler version 1"):
    run_sample("replay", tmp_path / "old.json", "--out", tmp_path / "never")
  assert not (tmp_path / "never").exists()


def test_bad_editing_inputs_are_named(tiny_checkpoints, image, tmp_path):
  model = tiny_checkpoints / "model"
  mask = tmp_path / "mask.png"
  Image.fromarray(np.zeros((16, 32), np.uint8)).save(mask)
  odd = tmp_path / "odd.png"
  Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(odd)
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(image.read_bytes()[:40])
  cases = [
      (["inpaint", "--image", image, "--mask", mask, "--prompt", "x"], "differ in size"),
      (["outpaint", "--image", image, "--canvas", 16, 64, "--prompt", "x"], "smaller than"),
      (["edit", "--image", odd, "--prompt", "x"], "not a multiple of the VQGAN factor 4"),
      (["edit", "--image", corrupt, "--prompt", "x"], "not a readable image"),
      (["edit", "--image", tmp_path / "none.png", "--prompt", "x"], "image not found"),
  ]
  for args, message in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      run_sample(*args[:1], "--checkpoint", model, "--out", tmp_path / "x", *args[1:])
  with pytest.raises(ValueError, match="holds a 'clip' model"):
    run_sample("generate", "--checkpoint", tiny_checkpoints / "clip", "--out", tmp_path / "x")
