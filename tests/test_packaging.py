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
  assert not (site / "configs").exists()  # the configs are installed inside the package
  assert (site / "paella_jax" / "configs" / "folder.py").is_file()
  assert (site / "paella_jax" / "serve" / "static" / "index.html").is_file()  # package data
  for command in ("paella-sample", "paella-convert", "paella-prepare", "paella-eval", "paella-serve"):
    proc = run(installed, tmp_path, str(bin_dir / command), "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout, (command, proc.stderr)
  proc = run(installed, tmp_path, str(bin_dir / "paella-train"), "--helpshort")
  assert "--helpfull" in proc.stdout and not proc.stderr  # the default: the demo preset


def test_installed_package_resolves_the_named_presets(installed, tmp_path):
  """Outside the repository: --config NAME finds the shipped file, a config file of one's own
  builds on a preset, and an unknown name is a one-line error."""
  site, bin_dir = installed
  (tmp_path / "mine.py").write_text(
      "from paella_jax.configs import tiny\n\n"
      "def get_config():\n  c = tiny.get_config()\n  c.train.total_steps = 7\n  return c\n")
  check = ("import paella_jax, paella_jax.configs as c\n"
           "print(paella_jax.__file__)\n"
           "print(c.config_file('tiny'))\n"
           "print(c.load('demo').job, c.load('paella_v1').job, c.load('vqgan_tiny').job)\n"
           "print(c.load('mine.py').train.total_steps)\n")
  proc = run(installed, tmp_path, sys.executable, "-c", check)
  assert proc.returncode == 0, proc.stderr
  package, tiny, jobs, steps = proc.stdout.splitlines()
  assert package.startswith(str(site)) and tiny == str(site / "paella_jax" / "configs" / "tiny.py")
  assert jobs == "pipeline paella vqgan" and steps == "7"
  proc = run(installed, tmp_path, str(bin_dir / "paella-train"), "--config", "tiny_v9")
  assert proc.returncode == 2 and proc.stderr.startswith("error: unknown config 'tiny_v9'")


@pytest.mark.slow
def test_installed_commands_sample_and_train_outside_the_repository(installed, tmp_path,
                                                                   tiny_checkpoints):
  _, bin_dir = installed
  proc = run(installed, tmp_path, str(bin_dir / "paella-sample"), "--checkpoint",
             str(tiny_checkpoints / "model"), "--prompt", "a red circle", "--batch-size", "2")
  assert proc.returncode == 0, proc.stderr
  assert np.load(tmp_path / "outputs" / "000" / "codes.npy").shape == (2, 8, 8)
  assert "PyTorch was not found" not in proc.stderr
  (tmp_path / "mine.py").write_text(
      "from paella_jax.configs import tiny\n\n"
      "def get_config():\n  c = tiny.get_config()\n  c.train.total_steps = 2\n  return c\n")
  for config, workdir in (("tiny", "run"), ("mine.py", "mine")):
    proc = run(installed, tmp_path, str(bin_dir / "paella-train"), "--config", config,
               "--workdir", workdir, "--noprogress", "--config.train.checkpoint_every=2",
               "--config.train.total_steps=2")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / workdir / "model" / "model.json").is_file()
