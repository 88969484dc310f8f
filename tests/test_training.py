"""The training step, the loop's checkpoints/resume, and the train.py / sample.py commands."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import tiny
from paella_jax.checkpoint import load_model
from paella_jax.models.paella import build_model
from paella_jax.training.loop import exported_weights, train
from paella_jax.training.step import (drop_conditioning, init_state, learning_rate_schedule,
                                      make_optimizer, make_train_step, smoothed_cross_entropy)
from tests.conftest import ROOT


def test_smoothed_cross_entropy_matches_pytorch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5, 11)).astype(np.float32) * 3
  labels = rng.integers(0, 11, (2, 3, 5))
  ours = smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1).mean()
  ref = torch.nn.functional.cross_entropy(torch.tensor(logits).permute(0, 3, 1, 2),
                                          torch.tensor(labels), label_smoothing=0.1)
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-6)


def test_conditioning_dropout_modes():
  clip = jnp.ones((4000, 3))
  kept = drop_conditioning(jax.random.key(0), clip, 0.25, "sample")[:, 0]
  assert abs(float(kept.mean()) - 0.75) < 0.03
  whole = [float(drop_conditioning(jax.random.key(i), clip, 0.25, "batch").mean())
           for i in range(200)]
  assert set(whole) == {0.0, 1.0} and abs(np.mean(whole) - 0.75) < 0.1
  with pytest.raises(ValueError, match="cond_drop_mode"):
    drop_conditioning(jax.random.key(0), clip, 0.1, "token")


def test_warmup_then_constant_and_cosine_schedules():
  cfg = dict(learning_rate=1.0, warmup_steps=10, total_steps=100, schedule="warmup_constant")
  lr = learning_rate_schedule(cfg)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(99)], [0, 0.5, 1, 1], atol=1e-6)
  cos = learning_rate_schedule(dict(cfg, schedule="warmup_cosine"))
  assert float(cos(10)) == pytest.approx(1.0) and float(cos(100)) == pytest.approx(0.0, abs=1e-6)


def test_overfits_a_fixed_batch():
  config = tiny.get_config()
  model = build_model(config.model)
  optimizer = make_optimizer(config.train)
  state = init_state(model, optimizer, jax.random.key(0), (8, 8))
  step = jax.jit(make_train_step(model, optimizer, config.train), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, 64, (16, 8, 8)), jnp.int32),
           "clip": jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)}
  history = []
  for _ in range(300):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  first, last = history[0], history[-20:]
  assert np.mean([m["loss"] for m in last]) < 0.5 * first["loss"]
  assert np.mean([m["accuracy"] for m in last]) > 0.9


def test_exported_weights_are_the_ema_when_the_export_asks_for_it():
  config = tiny.get_config()
  model = build_model(config.model)
  raw = init_state(model, make_optimizer(config.train), jax.random.key(0), (8, 8))
  assert exported_weights(raw, config) is raw.params
  config.export.weights = "ema"
  with pytest.raises(ValueError, match="export.weights='ema' needs train.ema_decay > 0"):
    exported_weights(raw, config)
  ema = init_state(model, make_optimizer(config.train), jax.random.key(0), (8, 8), ema=True)
  assert exported_weights(ema, config) is ema.ema_params


def small_config(total_steps):
  config = tiny.get_config()
  config.train.update(total_steps=total_steps, log_every=2, checkpoint_every=4, warmup_steps=3)
  return config


def test_resume_gives_identical_results(tmp_path):
  straight = train(small_config(8), str(tmp_path / "a"), progress=False)
  train(small_config(4), str(tmp_path / "b"), progress=False)        # stopped at step 4
  resumed = train(small_config(8), str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  losses = lambda d: [json.loads(l)["loss"] for l in open(d / "metrics.jsonl")]
  assert losses(tmp_path / "a")[-2:] == losses(tmp_path / "b")[-2:]
  assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["4", "8"]


def test_train_and_sample_commands(tmp_path):
  work, out = tmp_path / "run", tmp_path / "samples"
  data = tmp_path / "data.npz"
  rng = np.random.default_rng(0)
  np.savez(data, tokens=rng.integers(0, 64, (40, 8, 8)), clip=rng.normal(size=(40, 32)))
  subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py",
                  "--config.train.total_steps=6", "--config.data.source=arrays",
                  f"--config.data.path={data}", f"--workdir={work}", "--noprogress"],
                 check=True, cwd=ROOT)
  kind, config, _ = load_model(work / "model")
  assert kind == "paella_v1" and config["num_labels"] == 64
  emb = tmp_path / "emb.npy"
  np.save(emb, rng.normal(size=(2, 32)).astype(np.float32))
  subprocess.run([sys.executable, "sample.py", f"--checkpoint={work / 'model'}",
                  f"--embeddings={emb}", "--batch-size=3", f"--out={out}"], check=True, cwd=ROOT)
  codes = np.load(out / "codes.npy")
  assert codes.shape == (6, 8, 8) and codes.max() < 64
  assert json.load(open(out / "codes.json"))["sampler"]["steps"] == 8


def test_bad_training_data_is_named(tmp_path):
  data = tmp_path / "bad.npz"
  np.savez(data, tokens=np.full((4, 8, 8), 99), clip=np.zeros((4, 32)))
  config = small_config(2)
  config.data.update(source="arrays", path=str(data))
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
    train(config, str(tmp_path / "run"), progress=False)


def test_sample_command_with_prompts_writes_pngs_and_sidecars(tmp_path, tiny_checkpoints):
  """Prompts -> tiny random CLIP -> sampler -> tiny VQGAN decode -> PNGs, grid and sidecars."""
  from PIL import Image
  out = tmp_path / "out"
  subprocess.run([sys.executable, "sample.py", f"--checkpoint={tiny_checkpoints / 'model'}",
                  "--prompt", "a red circle", "--prompt", "a blue square", "--batch-size=2",
                  f"--out={out}"], check=True, cwd=ROOT)
  assert np.load(out / "codes.npy").shape == (4, 8, 8)
  assert Image.open(out / "0003.png").size == (32, 32)
  assert Image.open(out / "grid.png").size == (2 * 34 + 2, 2 * 34 + 2)
  sidecar = json.load(open(out / "0002.json"))
  assert sidecar["label"] == "a blue square" and sidecar["request"]["seed"] == 0
  assert sidecar["sampler"]["cfg"] == 5.0 and sidecar["command"] == "generate"


def test_a_moved_workdir_resumes(tmp_path):
  """A workdir moved (or copied) elsewhere between two runs resumes where it stopped."""
  straight = train(small_config(8), str(tmp_path / "a"), progress=False)
  train(small_config(4), str(tmp_path / "b"), progress=False)
  os.rename(tmp_path / "b", tmp_path / "moved")
  resumed = train(small_config(8), str(tmp_path / "moved"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)


def test_fine_tuning_starts_from_an_inference_checkpoint(tmp_path):
  base = train(small_config(4), str(tmp_path / "base"), progress=False)
  config = small_config(1)
  config.train.init_from = str(tmp_path / "base" / "model")
  from paella_jax.training.loop import load_initial_params
  from paella_jax.training.partition import Trainer
  trainer = Trainer.create(config)
  state = load_initial_params(trainer.init(), config.train.init_from, trainer.model)
  jax.tree.map(np.testing.assert_array_equal, state.params, base.params)
  assert int(state.step) == 0
  tuned = train(config, str(tmp_path / "tuned"), progress=False)
  assert int(tuned.step) == 1
  other = small_config(1)
  other.model.c_hidden = 32
  other.train.init_from = config.train.init_from
  with pytest.raises(ValueError, match="but the config trains"):
    train(other, str(tmp_path / "other"), progress=False)


def test_train_refuses_a_batch_that_does_not_divide_over_the_devices(tmp_path):
  """Batch 6 on 8 (virtual) devices: one line naming the batch and the shards, exit status 2,
  before any data is read or a step compiled (nothing written in the workdir)."""
  import os
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "train.py", "--config", "tiny",
                         "--config.train.batch_size=6", "--config.data.source=arrays",
                         f"--config.data.path={tmp_path / 'missing.npz'}",
                         f"--workdir={tmp_path / 'run'}", "--noprogress"],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 2, done.stderr[-2000:]
  (line,) = done.stderr.strip().splitlines()
  assert line.startswith("error: global batch 6 is not divisible by the 8 batch shards"), line
  assert not list((tmp_path / "run").glob("checkpoints/*"))
