"""The inference pipeline, its validated sampler settings, and paella-sample's output folders."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from paella_jax.commands.sample import main as sample_main
from paella_jax.pipeline import Pipeline
from paella_jax.families import PAELLA_V1
from paella_jax.sampler_settings import SamplerSettings
from paella_jax.sampling import row_keys, sample
from tests.conftest import ROOT


@pytest.mark.parametrize("settings, message", [
    (dict(cfg=math.nan), "cfg must be a finite number"),
    (dict(cfg=(1.0, math.inf)), "cfg must be a finite number"),
    (dict(typical_mass=-0.5), r"typical_mass must lie in \(0, 1\]"),
    (dict(typical_mass=1.5), r"typical_mass must lie in \(0, 1\]"),
    (dict(typical_mass=0.0), r"typical_mass must lie in \(0, 1\]"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(temperature=(1.0, -0.1)), "temperatures must be >= 0"),
    (dict(temperature=(math.nan, 1.0)), "temperature must be a finite number"),
    (dict(start_step=9), r"start_step must be an integer in \[0, steps=8\]"),
    (dict(renoise_mode="back"), "renoise_mode must be one of"),
    (dict(typical_min_tokens=0), "typical_min_tokens must be an integer >= 1"),
])
def test_bad_settings_are_refused_by_name(settings, message):
  with pytest.raises(ValueError, match=message):
    SamplerSettings.for_family("paella_v1").replace(**settings)


def test_settings_merge_mode_defaults_and_overrides():
  edit = SamplerSettings.from_record(PAELLA_V1.sampler_defaults, "edit")
  assert (edit.steps, edit.start_step, edit.cfg, edit.renoise_mode) == (24, 8, 6.0, "prev")
  generate = SamplerSettings.from_record(PAELLA_V1.sampler_defaults).with_overrides(cfg="off", steps=None)
  assert generate.cfg is None and generate.steps == 8 and generate.typical_mass == 0.2
  assert json.loads(json.dumps(generate.to_dict()))["temperature"] == [1.0, 1.0]
  with pytest.raises(ValueError, match="unknown sampler settings"):
    generate.with_overrides(guidance=3.0)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoints):
  return Pipeline.from_checkpoint(str(tiny_checkpoints / "model"))


def test_generate_is_the_sampler_on_the_prompt_embeddings(pipe):
  result = pipe.generate(["a red circle", "a blue square"], num_images=2, seed=3, cfg=2.0)
  emb = np.repeat(pipe.encode_text(["a red circle", "a blue square"]), 2, 0)
  settings = pipe.settings("generate", cfg=2.0)
  direct = sample(pipe.model, pipe.params, emb, row_keys(3, 4), settings, latent_shape=(8, 8))
  np.testing.assert_array_equal(result.codes, np.asarray(direct))
  assert result.labels == ["a red circle"] * 2 + ["a blue square"] * 2
  assert result.images.shape == (4, 32, 32, 3) and 0 <= result.images.min() <= result.images.max() <= 1
  assert result.settings.cfg == 2.0


def test_rows_do_not_depend_on_the_batch_they_share(pipe):
  """Each row draws from its own key and may have its own cfg, typical mass and temperatures:
  sampled together, every row gets the codes it gets alone."""
  emb = pipe.encode_text(["a red circle", "a blue square", "a green circle"])
  keys = jax.random.split(jax.random.key(7), 3)
  cfg, mass = np.array([1.0, 3.0, 6.0]), np.array([0.2, 0.5, 1.0])
  temperature = np.array([[1.0, 1.0], [0.7, 0.3], [2.0, 0.0]])
  together = np.asarray(sample(pipe.model, pipe.params, emb, keys, steps=4, cfg=cfg,
                               typical_mass=mass, temperature=temperature, latent_shape=(8, 8)))
  for i in range(3):
    alone = sample(pipe.model, pipe.params, emb[i:i + 1], keys[i:i + 1], steps=4, cfg=float(cfg[i]),
                   typical_mass=float(mass[i]), temperature=tuple(temperature[i]), latent_shape=(8, 8))
    np.testing.assert_array_equal(together[i], np.asarray(alone)[0])
  assert len({together[i].tobytes() for i in range(3)}) == 3
  first = pipe.generate("a red circle", num_images=3, seed=5).codes
  np.testing.assert_array_equal(pipe.generate("a red circle", num_images=1, seed=5).codes, first[:1])


def test_pipeline_refuses_bad_requests_by_name(pipe):
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="num_images must be an integer >= 1"):
    pipe.generate("x", num_images=0)
  with pytest.raises(ValueError, match="typical_mass must lie"):
    pipe.generate("x", typical_mass=-0.5)
  with pytest.raises(ValueError, match="exactly one"):
    pipe.inpaint(image, "x")
  with pytest.raises(ValueError, match="give at least 2 prompts"):
    pipe.interpolate(["only one"])
  with pytest.raises(ValueError, match="must be \\(height, width, 3\\)"):
    pipe.edit(np.zeros((32, 32)), "x")


def test_sample_command_keeps_runs_apart(tiny_checkpoints, tmp_path, monkeypatch):
  model = str(tiny_checkpoints / "model")
  monkeypatch.chdir(tmp_path)
  first = sample_main(["--checkpoint", model, "--prompt", "a", "--batch-size", "1"])
  second = sample_main(["--checkpoint", model, "--prompt", "a", "--batch-size", "1"])
  assert (first, second) == ("outputs/000", "outputs/001")
  out = tmp_path / "mine"
  sample_main(["--checkpoint", model, "--prompt", "a", "--batch-size", "2", "--out", str(out)])
  before = (out / "0001.png").read_bytes()
  with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
    sample_main(["--checkpoint", model, "--prompt", "b", "--batch-size", "1", "--out", str(out)])
  assert (out / "0001.png").read_bytes() == before
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="did not write \\(notes.txt\\)"):
    sample_main(["--checkpoint", model, "--prompt", "b", "--out", str(out), "--overwrite"])
  (out / "notes.txt").unlink()
  sample_main(["--checkpoint", model, "--prompt", "b", "--batch-size", "1", "--out", str(out),
               "--overwrite", "--cfg", "off"])
  assert sorted(p.name for p in out.iterdir()) == ["0000.json", "0000.png", "codes.json",
                                                   "codes.npy", "grid.png"]
  assert json.load(open(out / "0000.json"))["sampler"]["cfg"] is None


def test_sample_command_prints_one_line_errors(tiny_checkpoints, tmp_path):
  proc = subprocess.run(
      [sys.executable, "sample.py", "--checkpoint", str(tiny_checkpoints / "model"),
       "--prompt", "a", "--typical-mass", "-0.5", "--out", str(tmp_path / "x")],
      cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: typical_mass must lie in (0, 1] (or be off), got -0.5"]
  assert not (tmp_path / "x").exists()
