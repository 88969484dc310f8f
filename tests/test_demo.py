"""The built-in demo: scenes, the adherence analyser, and a shortened end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, vqgan_tiny
from paella_jax.data.scenes import (HELD_OUT, NEW_SHAPES, SHAPES, all_scenes, held_out_scenes,
                                    make_dataset, shape_scenes, training_scenes)
from paella_jax.eval.adherence import analyse, score
from paella_jax.models.vqgan import init_params, vqgan_from_config
from paella_jax.training.vqgan import init_state, make_train_step, restart_dead_codes


def test_scenes_are_deterministic_and_hold_combinations_out():
  a, scenes_a = make_dataset(200, seed=3)
  b, scenes_b = make_dataset(200, seed=3)
  np.testing.assert_array_equal(a, b)
  assert scenes_a == scenes_b
  assert len(all_scenes()) == 72 and len(training_scenes()) == 68
  assert not set(held_out_scenes()) & set(scenes_a)
  assert all(tuple(s) in HELD_OUT for s in held_out_scenes())
  assert a.shape == (200, 32, 32, 3) and a.min() >= 0 and a.max() <= 1


def test_analyser_reads_the_datasets_own_images():
  images, scenes = make_dataset(1500, seed=11, scenes=all_scenes())
  result = score(images, scenes)
  assert result["all"] >= 0.99, result


def test_new_shapes_are_drawn_recognised_and_kept_out_of_the_demo():
  scenes = shape_scenes(NEW_SHAPES)
  assert len(scenes) == 24 and scenes[0].caption == "a red rectangle in the top left"
  images, drawn = make_dataset(480, seed=5, scenes=scenes)
  assert score(images, drawn)["all"] >= 0.99
  # the demo's own shapes are still read as before with the new shape in the analyser
  assert not {s.shape for s in make_dataset(500, seed=0)[1]} & set(NEW_SHAPES)
  assert {s.shape for s in training_scenes(SHAPES + NEW_SHAPES)} == set(SHAPES + NEW_SHAPES)
  with pytest.raises(ValueError, match="unknown shape.*hexagon.*draw circle"):
    shape_scenes(("hexagon",))


def test_analyser_reports_empty_images_as_failures():
  blank = np.full((32, 32, 3), 0.92, np.float32)
  assert analyse(blank) is None
  images, scenes = make_dataset(2, seed=0)
  result = score([blank, images[1]], scenes)
  assert result["all"] == 0.5 and result["count"] == 2 and result["correct"]["all"] == 1


def test_dead_codes_restart_onto_encoder_latents():
  c = vqgan_tiny.get_config()
  c.model.update(ch=8, ch_mult=(1, 2), norm_groups=4, z_channels=8, embed_dim=8, n_embed=32)
  model = vqgan_from_config(c.model)
  images = jnp.asarray(make_dataset(4, seed=0, size=16)[0])
  params = init_params(model, jax.random.key(0), 16)
  usage = jnp.arange(32) % 2  # the even codes went unused
  new = restart_dead_codes(model, params, usage, images, jax.random.key(1))
  before = np.asarray(params["quantize"]["embedding"]["embedding"])
  after = np.asarray(new["quantize"]["embedding"]["embedding"])
  np.testing.assert_array_equal(after[1::2], before[1::2])
  latents = np.asarray(model.apply({"params": params}, images, method="encode_latents"))
  latents = latents.reshape(-1, 8)
  distance = np.linalg.norm(after[0::2, None] - latents[None], axis=-1).min(axis=1)
  assert distance.max() < 1e-6 and not np.allclose(after[0::2], before[0::2])


def test_vqgan_steps_with_restarts_are_deterministic():
  """Stage-1 steps (dead-code restarts, the decaying rate of the demo's recipe) repeat bit for
  bit."""
  c = vqgan_tiny.get_config()
  c.model.update(ch=8, ch_mult=(1, 2), norm_groups=4, z_channels=8, embed_dim=8, n_embed=32)
  c.train.update(batch_size=4, total_steps=6, restart_every=2, restart_until=4, lr_decay_steps=3)
  model = vqgan_from_config(c.model)
  step = jax.jit(make_train_step(model, c.train))
  images = {"images": jnp.asarray(make_dataset(4, seed=0, size=16)[0])}

  def train():
    state = init_state(model, c.train, jax.random.key(0), (16, 16))
    for _ in range(6):
      state, metrics = step(state, images)
    return state, metrics

  (a, metrics), (b, _) = train(), train()
  assert int(a.step) == 6 and int(metrics["dead_codes"]) >= 0
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  np.testing.assert_array_equal(a.code_usage, b.code_usage)


@pytest.mark.slow
def test_demo_end_to_end_shortened(tmp_path):
  """The real pipeline with fewer steps. Chance: colour 1/6, position 1/4, shape 1/3."""
  from paella_jax.training.end_to_end import run
  config = demo.get_config()
  config.data.num_images = 2048
  # The demo's recipe, shortened: 2000 steps of batch 8, the last 500 with a decaying rate.
  config.vqgan.train.update(total_steps=2000, lr_decay_steps=500, checkpoint_every=1000)
  config.paella.train.update(total_steps=1500, checkpoint_every=750)
  config.eval.update(samples_per_prompt=2, held_out_samples_per_prompt=3)
  report = run(config, str(tmp_path), progress=False)
  assert (tmp_path / "samples" / "grid.png").is_file()
  written = json.load(open(tmp_path / "report.json"))
  assert written["seen"]["count"] == 68 * 2 and written["held_out"]["count"] == 4 * 3
  assert set(written["stage_minutes"]) == {"vqgan", "prepare", "paella", "evaluate"}
  assert report["seen"]["colour"] > 2 * (1 / 6), report
  assert report["seen"]["position"] > 2 * (1 / 4), report


@pytest.mark.slow
def test_demo_v3_end_to_end_shortened(tmp_path):
  """configs/demo_v3.py with few steps: the v1 demo's report, and `python sample.py
  --checkpoint WORKDIR/paella/model` samples a prompt with the demo's ByT5, CLIP and VQGAN."""
  import os
  import subprocess
  import sys
  from configs import demo_v3
  from paella_jax.training.end_to_end import run
  config = demo_v3.get_config()
  config.data.num_images = 256
  config.vqgan.train.update(total_steps=20, restart_until=0)
  config.paella.train.update(total_steps=20, checkpoint_every=20, log_every=10)
  config.eval.update(samples_per_prompt=1, held_out_samples_per_prompt=1)
  report = run(config, str(tmp_path), progress=False)
  assert json.load(open(tmp_path / "report.json")) == json.loads(json.dumps(report))
  assert report["seen"]["count"] == 68 and report["held_out"]["count"] == 4
  for part in ("seen", "held_out", "dataset_analyser_check", "vqgan_reconstruction"):
    assert {"colour", "shape", "position", "all"} <= set(report[part]), part
  assert report["dataset_analyser_check"]["all"] >= 0.99 and report["minutes"] > 0
  meta = json.load(open(tmp_path / "paella" / "model" / "model.json"))
  assert meta["kind"] == "paella_v3"

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "samples_cli"
  done = subprocess.run([sys.executable, "sample.py", "--checkpoint",
                         str(tmp_path / "paella" / "model"), "--prompt",
                         "a red circle in the top left", "--batch-size", "2", "--out", str(out)],
                        cwd=root, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  sidecar = json.load(open(out / "0001.json"))
  assert sidecar["kind"] == "paella_v3" and sidecar["label"] == "a red circle in the top left"
  assert (out / "0000.png").is_file() and (out / "0001.png").is_file()
  assert os.path.samefile(sidecar["byt5_checkpoint"], tmp_path / "byt5")
  assert np.load(out / "codes.npy").shape == (2, 8, 8)
