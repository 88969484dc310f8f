"""`pip install .` gives console commands that work outside the repository."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

COMMANDS = ("paella-train", "paella-sample", "paella-convert", "paella-prepare", "paella-eval",
            "paella-aot", "paella-serve")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The package installed (without dependencies) into a fresh folder: (site folder, bin)."""
  target = tmp_path_factory.mktemp("site")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(target), str(ROOT)],
                 check=True, capture_output=True, cwd=target)
  return target, target / "bin"


def run(installed, tmp_path, *args):
  site, _ = installed
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)


def test_every_command_is_installed_and_answers_help(installed, tmp_path):
  site, bin_dir = installed
  assert sorted(p.name for p in bin_dir.iterdir()) == sorted(COMMANDS)
  assert not (site / "configs").exists()  # configs/ stays in the repository, passed by path
  assert (site / "paella_jax" / "serve" / "static" / "index.html").is_file()  # package data
  for command in ("paella-sample", "paella-convert", "paella-prepare", "paella-eval", "paella-serve"):
    proc = run(installed, tmp_path, str(bin_dir / command), "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stderr)
  proc = run(installed, tmp_path, str(bin_dir / "paella-train"), "--helpshort")
  assert "no --config given" in proc.stderr  # outside the repository there is no default


@pytest.mark.slow
def test_installed_commands_sample_and_train_outside_the_repository(installed, tmp_path,
                                                                   tiny_checkpoints):
  _, bin_dir = installed
  proc = run(installed, tmp_path, str(bin_dir / "paella-sample"), "--checkpoint",
             str(tiny_checkpoints / "model"), "--prompt", "a red circle", "--batch-size", "2")
  assert proc.returncode == 0, proc.stderr
  assert np.load(tmp_path / "outputs" / "000" / "codes.npy").shape == (2, 8, 8)
  assert "PyTorch was not found" not in proc.stderr
  proc = run(installed, tmp_path, str(bin_dir / "paella-train"), "--config",
             str(ROOT / "configs" / "tiny.py"), "--workdir", "run", "--noprogress",
             "--config.train.total_steps=2", "--config.train.checkpoint_every=2")
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "run" / "model" / "model.json").is_file()
