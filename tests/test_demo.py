"""The built-in demo: scenes, the adherence analyser, and a shortened end-to-end run."""

import json

import numpy as np
import pytest

from configs import demo
from paella_jax.data.scenes import (HELD_OUT, all_scenes, held_out_scenes, make_dataset,
                                    training_scenes)
from paella_jax.eval.adherence import analyse, score


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


def test_analyser_reports_empty_images_as_failures():
  blank = np.full((32, 32, 3), 0.92, np.float32)
  assert analyse(blank) is None
  images, scenes = make_dataset(2, seed=0)
  assert score([blank, images[1]], scenes)["all"] == 0.5


@pytest.mark.slow
def test_demo_end_to_end_shortened(tmp_path):
  """The real pipeline with fewer steps. Chance: colour 1/6, position 1/4, shape 1/3."""
  from paella_jax.demo import run
  config = demo.get_config()
  config.num_images = 2048
  config.vqgan.train.total_steps = 1000   # colours need ~1000 VQGAN steps (500 give ~34%)
  config.paella.train.update(total_steps=1500, checkpoint_every=750)
  config.eval_samples_per_prompt = 2
  report = run(config, str(tmp_path), progress=False)
  assert (tmp_path / "samples" / "grid.png").is_file()
  assert json.load(open(tmp_path / "report.json"))["seen"]["count"] == 68 * 2
  assert report["seen"]["colour"] > 2 * (1 / 6), report
  assert report["seen"]["position"] > 2 * (1 / 4), report
