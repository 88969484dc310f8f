"""Sharded, multi-device and multi-process training; checkpoints across meshes; preemption; AOT.

Multi-device checks run in subprocesses with fake CPU devices (XLA_FLAGS must be set before JAX
starts); multi-process checks start two processes that talk over localhost (gloo).
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from paella_jax.checkpoint import load_model
from paella_jax.training.loop import checkpoint_manager
from tests.conftest import ROOT
from tests.scale_worker import tiny_config


def env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def worker(devices, *args):
  out = subprocess.run([sys.executable, "-m", "tests.scale_worker", *map(str, args)], cwd=ROOT,
                       env=env(devices), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.split("RESULT ", 1)[1])


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_shardings_and_sharded_equals_unsharded():
  r = worker(8, "sharding")
  assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  rules = {name for name, _ in tiny_config(1).sharding.rules}
  assert set(r["logical_names"]) == {"conv_in", "cond", "embed", "mlp", "vocab"} <= rules
  # ("embed", "mlp") -> ("fsdp", "tensor"): the kernel, its Adam moment and EMA split 4-way.
  assert r["kernel_spec"] == r["mu_spec"] == r["ema_spec"] == "P('fsdp', 'tensor')"
  assert r["kernel_shard"][0] * 4 == r["kernel_shape"][0]
  assert r["batch_spec"] == "P(('data', 'fsdp'),)"
  np.testing.assert_allclose(r["losses"], r["losses_1device"], atol=1e-5)
  assert r["max_param_diff"] < 1e-5
  assert r["bf16_param_dtypes"] == ["float32"] and np.isfinite(r["bf16_loss"])


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # minutes on 2 cores: CI runs it in the slow tier
def test_two_processes_equal_one_and_restore_onto_another_mesh(tmp_path):
  """2 processes x 2 devices == 1 process x 4 devices; a run saved on 8 devices resumes on 4."""
  port, flags = free_port(), ["--config.train.total_steps=8", "--config.train.log_every=2",
                              "--config.train.checkpoint_every=4", "--config.train.warmup_steps=3",
                              "--config.mesh.shape=(2,2,1)", "--noprogress"]
  procs = [subprocess.Popen(
      [sys.executable, "train.py", "--config", "configs/tiny.py", *flags,
       f"--workdir={tmp_path / 'multi'}", f"--coordinator-address=localhost:{port}",
       "--num-processes=2", f"--process-id={i}", "--cpu-collectives=gloo"],
      cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  worker(8, "train", tmp_path / "saved8", 4, "[2, 4, 1]")
  assert worker(4, "train", tmp_path / "saved8", 8, "[2, 2, 1]")["step"] == 8   # resumed on 4
  worker(4, "train", tmp_path / "single", 8, "[2, 2, 1]",            # EMA does not change losses
         json.dumps({"train.ema_decay": 0.9, "export.weights": "ema", "export.dtype": "bfloat16"}))
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  single, multi, resumed = (losses(tmp_path / d) for d in ("single", "multi", "saved8"))
  assert sorted(multi) == sorted(single) == [2, 4, 6, 8]
  np.testing.assert_allclose([multi[s] for s in single], list(single.values()), atol=1e-5)
  np.testing.assert_allclose([resumed[s] for s in (6, 8)], [single[6], single[8]], atol=1e-5)
  assert load_model(tmp_path / "multi" / "model")[0] == "paella_v1"
  _, _, ema = load_model(tmp_path / "single" / "model")
  assert {str(x.dtype) for x in jax.tree.leaves(ema)} == {"bfloat16"}


def test_sigterm_saves_a_checkpoint_and_partial_saves_are_ignored(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "train.py", "--config", "configs/tiny.py", "--noprogress",
       "--config.train.total_steps=100000", "--config.train.log_every=1",
       "--config.train.checkpoint_every=100000", f"--workdir={work}"],
      cwd=ROOT, env=env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (work / "metrics.jsonl").is_file() or not (work / "metrics.jsonl").read_text():
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "preempted: checkpoint saved at step" in out
  manager = checkpoint_manager(str(work), tiny_config(1))
  saved = manager.latest_step()
  assert saved is not None and saved > 0 and not (work / "model").exists()
  # A save killed midway is left under Orbax's temporary name: never taken as the latest.
  shutil.copytree(work / "checkpoints" / str(saved),
                  work / "checkpoints" / f"{saved + 7}.orbax-checkpoint-tmp-1234567")
  manager.close()
  assert checkpoint_manager(str(work), tiny_config(1)).latest_step() == saved


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install 'jax[tpu]')")
def test_aot_compile_for_a_tpu_topology():
  out = subprocess.run([sys.executable, "-m", "paella_jax.commands.aot", "--config", "configs/tiny.py",
                        "--topology", "v5e:2x2", "--global-batch", "32",
                        "--config.mesh.shape=(2,2,1)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 x TPU v5 lite" in out.stdout and "{'data': 2, 'fsdp': 2, 'tensor': 1}" in out.stdout
  assert "FITS" in out.stdout and "GFLOP per image" in out.stdout
