"""Bad inputs and faults: weights-checked checkpoints, --overwrite that replaces only our own
checkpoints, prepare on a changed source, training that falls back to an older checkpoint,
prompts cut to the text encoder's length (warned) or not valid UTF-8 (refused), the sampler's
own checks of its settings, a model directory copied without its encoders, and one-line errors
(exit 2) of the command lines, with nothing written or lost."""

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from paella_jax.checkpoint import (HASH_KEY, checkpoint_id, load_model, read_model_description,
                                   save_model, weights_sha256)
from paella_jax.cli import run_main
from paella_jax.sampling import sample
from tests.conftest import FIXTURES, ROOT


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.standard_normal((64, 48)).astype(np.float32),
                    "bias": np.zeros(48, np.float32)},
          "scale": jnp.asarray(rng.standard_normal(300), jnp.bfloat16)}


def _snapshot(root):
  """{relative path: file bytes} of everything below `root`."""
  out = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _cli_error(capsys, main, argv):
  """Runs `main` as its command line does; returns the one stderr line of an expected failure."""
  with pytest.raises(SystemExit) as exit_info:
    run_main(main, argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


# ------------------------------------------------------------------------------ checkpoints

def test_weights_hash_is_the_checkpoint_id(tmp_path):
  params = _params()
  a = save_model(tmp_path / "a", params, "test", {"width": 48})
  b = save_model(tmp_path / "b", params, "test", {"width": 48}, meta={"note": "same weights"})
  changed = _params()
  changed["dense"]["kernel"][3, 5] += 1e-6
  c = save_model(tmp_path / "c", changed, "test", {"width": 48})
  assert read_model_description(a)[HASH_KEY] == weights_sha256(params)
  assert checkpoint_id(a) == checkpoint_id(read_model_description(b)) == weights_sha256(params)[:16]
  assert checkpoint_id(c) != checkpoint_id(a)
  _, _, loaded = load_model(a)
  assert weights_sha256(loaded) == weights_sha256(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def _largest_params_file(ckpt):
  return max((p for p in (ckpt / "params").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage, message", [
    ("flip", "do not match the hash|cannot be read"),
    ("truncate", r"has \d+ bytes, \d+ when saved"),
    ("remove", "is missing"),
])
def test_damaged_weights_are_named(damage, message, tmp_path):
  ckpt = tmp_path / "model"
  save_model(ckpt, _params(), "test", {})
  path = _largest_params_file(ckpt)
  data = bytearray(path.read_bytes())
  if damage == "flip":
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
  elif damage == "truncate":
    path.write_bytes(bytes(data[:-7]))
  else:
    path.unlink()
  with pytest.raises(ValueError, match=message) as info:
    load_model(ckpt)
  assert str(ckpt) in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_without_a_hash_still_loads(tmp_path):
  """model.json written before the hash was recorded: loaded unchecked; the id hashes the
  description (the id such checkpoints had before)."""
  ckpt = tmp_path / "old"
  save_model(ckpt, _params(), "test", {})
  description = read_model_description(ckpt)
  old = {k: description[k] for k in ("kind", "config", "meta")}
  (ckpt / "model.json").write_text(json.dumps(old))
  assert load_model(ckpt)[0] == "test"
  assert checkpoint_id(ckpt) == hashlib.sha256(
      json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]


def _v1_file(tmp_path, c_r):
  """The tiny Paella v1 fixture as if trained with timestep width `c_r` (c_clip 32)."""
  import torch
  state = torch.load(FIXTURES / "paella_v1_tiny.pt", weights_only=True)
  state = {k: v[:, :32 + c_r] if k.endswith("cond_mapper.weight") else v
           for k, v in state.items()}
  path = tmp_path / f"paella_v1_c_r{c_r}.pt"
  torch.save(state, path)
  return path


@pytest.mark.parametrize("existing", ["foreign", "checkpoint_with_extra_file", "file"])
def test_convert_overwrite_replaces_only_our_checkpoints(existing, tmp_path, capsys):
  from paella_jax.commands.convert import main
  out = tmp_path / "out"
  if existing == "file":
    out.write_text("notes")
  else:
    if existing == "foreign":
      out.mkdir()
    else:
      save_model(out, _params(), "test", {})
    (out / "notes.txt").write_text("keep me")
  before = _snapshot(tmp_path) if existing != "file" else out.read_text()
  line = _cli_error(capsys, main, ["paella-v1", str(FIXTURES / "paella_v1_tiny.pt"), str(out),
                                   "--overwrite"])
  assert "is not a paella-jax checkpoint" in line and "nothing was changed" in line
  assert (_snapshot(tmp_path) if existing != "file" else out.read_text()) == before


def test_convert_overwrite_replaces_a_checkpoint_and_changes_its_id(tmp_path, capsys):
  from paella_jax.commands.convert import main
  out = tmp_path / "out"
  save_model(out, _params(), "test", {})
  old_id = checkpoint_id(out)
  line = _cli_error(capsys, main, ["paella-v1", str(FIXTURES / "paella_v1_tiny.pt"), str(out)])
  assert "exists; pass overwrite=True (or --overwrite)" in line
  assert checkpoint_id(out) == old_id
  run_main(main, ["paella-v1", str(FIXTURES / "paella_v1_tiny.pt"), str(out), "--overwrite"])
  assert load_model(out)[0] == "paella_v1" and checkpoint_id(out) != old_id
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary or old directory left


def test_convert_names_the_c_r_option(tmp_path, capsys):
  from paella_jax.commands.convert import main
  path = _v1_file(tmp_path, c_r=16)
  line = _cli_error(capsys, main, ["paella-v1", str(path), str(tmp_path / "out")])
  assert "--c-r" in line and "conditioning width 48" in line
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="--c-r"):                 # --debug: the exception itself
    run_main(main, ["paella-v1", str(path), str(tmp_path / "out"), "--debug"])
  run_main(main, ["paella-v1", str(path), str(tmp_path / "out"), "--c-r", "16"])
  assert load_model(tmp_path / "out")[1]["c_r"] == 16


# --------------------------------------------------------------------------------- training

def _state(width, step):
  from paella_jax.training.step import TrainState
  noise = np.random.default_rng(step).standard_normal((width, 512)).astype(np.float32)
  return TrainState(step=jnp.int32(step), params={"w": jnp.asarray(noise) + step},
                    opt_state=(), rng=jax.random.key(step))


def _manager(workdir):
  from paella_jax.training.checkpointing import checkpoint_manager
  return checkpoint_manager(str(workdir), ml_collections.ConfigDict(
      {"train": {"keep_checkpoints": 3}}))


def _save(workdir, states):
  from paella_jax.training.checkpointing import save_checkpoint
  manager = _manager(workdir)
  for state in states:
    save_checkpoint(manager, state, {"position": int(state.step)})
  manager.wait_until_finished()
  manager.close()


def _truncate_step(workdir, step):
  data_dir = workdir / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d"
  path = max(data_dir.iterdir(), key=lambda p: p.stat().st_size)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 3])


def test_training_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog):
  from paella_jax.training.checkpointing import restore_checkpoint
  _save(tmp_path, [_state(4, 2), _state(4, 4)])
  _truncate_step(tmp_path, 4)
  abstract = jax.eval_shape(lambda: _state(4, 0))
  manager = _manager(tmp_path)
  with caplog.at_level(logging.WARNING, "paella_jax.training"):
    state, data = restore_checkpoint(manager, abstract)
  manager.close()
  assert int(state.step) == 2 and data == {"position": 2}
  np.testing.assert_array_equal(state.params["w"], _state(4, 2).params["w"])
  (warning,) = [r.getMessage() for r in caplog.records]
  assert "step 4 cannot be restored" in warning and "resuming from step 2" in warning
  assert os.listdir(tmp_path / "checkpoints.unreadable") == ["4"]
  _save(tmp_path, [_state(4, 4)])                      # step 4 trained again is saved again
  manager = _manager(tmp_path)
  assert int(restore_checkpoint(manager, abstract)[0].step) == 4
  manager.close()


def test_training_with_no_readable_checkpoint_stops(tmp_path):
  from paella_jax.training.checkpointing import restore_checkpoint
  _save(tmp_path, [_state(4, 2)])
  _truncate_step(tmp_path, 2)
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError, match="no checkpoint in .* can be restored"):
    restore_checkpoint(_manager(tmp_path), jax.eval_shape(lambda: _state(4, 0)))
  assert _snapshot(tmp_path) == before


def test_workdir_of_another_model_shape_is_one_line(tmp_path):
  from paella_jax.training.checkpointing import restore_checkpoint
  _save(tmp_path, [_state(4, 2)])
  with pytest.raises(ValueError) as info:
    restore_checkpoint(_manager(tmp_path), jax.eval_shape(lambda: _state(5, 0)))
  assert str(info.value) == (
      f"{tmp_path} holds another model: params/w is (4, 512) in its checkpoint (step 2) but "
      "(5, 512) in this config; train in another --workdir, or with the config it was trained "
      "with")


# ---------------------------------------------------------------------------------- prepare

def test_prepare_refuses_a_changed_source_and_resumes_an_extended_one(tmp_path):
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  from tests.data_fixtures import SIZE, tiny_encoders, write_folder
  from paella_jax.data.prepare import Preparer
  from paella_jax.data.records import read_manifest, record_format, record_paths
  from paella_jax.data.sources import open_source
  src, out = tmp_path / "src", str(tmp_path / "out")
  write_folder(str(src))                                          # 17 stems: 4 shards of 5
  preparer = Preparer(*tiny_encoders(), size=SIZE, batch_size=8, threads=2)
  run = lambda: preparer.run(open_source(str(src), shard_size=5), out, progress=False)
  records = run()["num_records"]
  for name in ("manifest.json", "folder-00003.json", "folder-00003.array_record"):
    os.remove(os.path.join(out, name))                            # killed in the last shard
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = ["folder-00003.array_record.tmp.otherhost.7",
           f"settings.json.tmp.{socket.gethostname()}.{dead.pid}"]
  kept = "manifest.json.tmp.otherhost.7"                         # maybe another host's, live
  for name in stale + [kept]:
    with open(os.path.join(out, name), "wb") as f:
      f.write(b"partial")

  (src / "aaa.png").write_bytes((src / "grey.png").read_bytes())  # sorts first: shifts shards
  (src / "aaa.txt").write_text("inserted")
  before = _snapshot(out)
  with pytest.raises(ValueError) as info:
    run()
  message = str(info.value)
  assert "the source changed since" in message and "shard folder-00000" in message
  assert "example 0 was 'alpha'" in message and "now 'aaa'" in message
  assert "\n" not in message and _snapshot(out) == before       # nothing written or lost

  for ext in ("png", "txt"):
    os.rename(src / f"aaa.{ext}", src / f"zzz.{ext}")            # sorts last: unfinished shard
  manifest = run()
  assert manifest == read_manifest(out) and manifest["num_records"] == records + 1
  assert sorted(os.listdir(out)) == sorted(
      [f"folder-0000{i}.{e}" for i in range(4) for e in ("array_record", "json")]
      + ["manifest.json", "settings.json", kept])
  fmt = record_format(manifest)
  data = ArrayRecordDataSource(record_paths(out, manifest))
  captions = [fmt.caption(data[i]) for i in range(len(data))]
  assert len(set(captions)) == len(captions) == records + 1 and "inserted" in captions


# ---------------------------------------------------------------------------- command lines

def _train_workdir(tmp_path):
  """A workdir holding a checkpoint whose clf bias has 7 classes (configs/tiny.py: 64)."""
  from paella_jax.training.step import TrainState
  _save(tmp_path / "work", [TrainState(step=jnp.int32(1), params={"clf": {"bias": jnp.zeros(7)}},
                                       opt_state=(), rng=jax.random.key(0))])
  return ["train.py", "--config", "configs/tiny.py", f"--workdir={tmp_path / 'work'}",
          "--noprogress"]


@pytest.mark.parametrize("command, expected", [
    ("train", "holds another model: params/clf/bias is (7,) in its checkpoint (step 1) but "
              "(64,) in this config"),
    ("train_config_field", "the config has no field 'batch_sise' (--config.train.batch_sise=2)"),
    ("convert", "checkpoint not found"),
    ("prepare", "folder source not found"),
])
def test_command_lines_fail_in_one_line(command, expected, tmp_path):
  if command == "train":
    argv = _train_workdir(tmp_path)
  elif command == "train_config_field":
    argv = ["train.py", "--config", "configs/tiny.py", "--config.train.batch_sise=2",
            f"--workdir={tmp_path / 'work'}"]
  elif command == "convert":
    argv = ["-m", "paella_jax.convert", "paella-v1", str(tmp_path / "missing.pt"),
            str(tmp_path / "out")]
  else:
    argv = ["-m", "paella_jax.data.prepare", "--source", str(tmp_path / "missing"), "--out",
            str(tmp_path / "out"), "--vqgan", "v", "--clip", "c"]
  before = _snapshot(tmp_path)
  run = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  lines = run.stderr.strip().splitlines()
  assert run.returncode == 2 and lines[-1].startswith("error: ") and expected in lines[-1], (
      run.stderr[-3000:])
  assert "Traceback" not in run.stderr and len(lines) <= 2, run.stderr  # + at most a jax notice
  assert _snapshot(tmp_path) == before


def _run(argv, tmp_path, env=None):
  """Runs `python ARGV` from the repository root (`env` on top of this one's; None removes a
  variable); returns (exit status, stderr lines)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  run = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, timeout=300,
                       env={k: v for k, v in env.items() if v is not None})
  return run.returncode, run.stderr.decode("utf-8", "replace").strip().splitlines()


def test_prompt_bytes_that_are_not_utf8_are_one_line(tiny_checkpoints, tmp_path):
  """`sample.py --prompt $'\\xff\\xfe'`: Python decodes the bytes to surrogate escapes."""
  code, lines = _run(["sample.py", "--checkpoint", str(tiny_checkpoints / "model"), "--prompt",
                      b"a \xff\xfe", "--out", str(tmp_path / "out")], tmp_path)
  assert code == 2 and lines[-1] == (
      "error: prompt 0 is not valid UTF-8 text: character 2 is the byte 0xff, which does not "
      "decode as UTF-8 ('a \\udcff\\udcfe'); pass prompts encoded as UTF-8"), lines
  assert len(lines) <= 2 and not os.listdir(tmp_path)


@pytest.mark.parametrize("args, expected", [
    (["--topology", "v9z:2x2"], "error: --topology v9z:2x2: Invalid TPU external name"),
    (["--global-batch", "3"], "error: global batch 3 is not divisible by the 4 batch shards"),
    (["--config.train.batch_sise=2"], "error: the config has no field 'batch_sise' "
     "(--config.train.batch_sise=2) Did you mean \"batch_size\""),
    (["--config.train.batch_size=two"], "error: flag --config.train.batch_size=two: invalid "
     "literal for int()"),
    ("no libtpu", "error: libtpu is not installed: compiling for a TPU topology needs it"),
    ("debug", "ValueError: --topology v9z:2x2: Invalid TPU external name"),
])
def test_aot_fails_in_one_line(args, expected, tmp_path):
  command = ["-m", "paella_jax.commands.aot", "--config", "configs/tiny.py"]
  env = {}
  if args == "no libtpu":
    env = {"TPU_LIBRARY_PATH": None}
    command = ["-c", "import sys; sys.modules['libtpu'] = None; sys.argv[0] = 'aot'; "
               "from paella_jax.commands.aot import cli_main; cli_main()", "--config", "configs/tiny.py"]
  elif args == "debug":
    command += ["--topology", "v9z:2x2", "--debug"]
  else:
    command += args
  code, lines = _run(command, tmp_path, env)
  assert lines[-1].startswith(expected), lines[-5:]
  if args == "debug":
    assert code == 1 and "Traceback (most recent call last):" in lines
  else:
    assert code == 2 and len(lines) <= 2 and not any("Traceback" in line for line in lines)
  assert not os.listdir(tmp_path)


def test_train_overrides_apply_to_the_default_demo_config(tmp_path):
  """`python train.py --config.FIELD=...` without --config overrides the demo's config."""
  code, lines = _run(["train.py", "--config.vqgan.train.total_steps=many",
                      "--workdir", str(tmp_path / "run")], tmp_path)
  assert code == 2 and lines[-1].startswith(
      "error: flag --config.vqgan.train.total_steps=many: invalid literal for int()"), lines[-3:]
  assert not os.listdir(tmp_path)


def _sample_main(argv):
  from paella_jax.commands.sample import main
  return main(argv)


def test_long_prompts_are_cut_with_one_warning(tiny_checkpoints, tmp_path, caplog):
  long = " ".join(["word"] * 80)                       # 80 tokens + start and end
  with caplog.at_level(logging.WARNING, "paella_jax.prompts"):
    run_main(_sample_main, ["generate", "--checkpoint", str(tiny_checkpoints / "model"),
                            "--prompt", long, "--prompt", "short", "--prompt", long + " more",
                            "--out", str(tmp_path / "out")])
  (warning,) = [r.getMessage() for r in caplog.records if r.name == "paella_jax.prompts"]
  assert warning.startswith("prompt cut to CLIP's 77 tokens (start and end tokens included): "
                            "it has 82 ('word word") and warning.endswith(
                                "the rest is ignored; 2 of the 3 prompts were cut"), warning
  assert os.path.isfile(tmp_path / "out" / "grid.png")  # cut, not refused


def test_byt5_prompts_cut_warn_and_bad_text_is_refused(caplog):
  from paella_jax.byt5_tokenizer import ByT5Tokenizer
  tokenizer = ByT5Tokenizer(max_length=16)
  with caplog.at_level(logging.WARNING, "paella_jax.prompts"):
    ids = tokenizer(["a" * 15, "é" * 8])               # 16 ids with </s>; 17
    tokenizer(["a" * 40], warn_truncated=False)
  (warning,) = [r.getMessage() for r in caplog.records]
  assert warning.startswith("prompt cut to ByT5's 16 tokens (UTF-8 bytes and </s>): it has 17 "
                            "('ééééééé") and ids.shape == (2, 16), warning
  with pytest.raises(ValueError, match=r"prompt 1 is not valid UTF-8 text: character 0 is the "
                     r"lone surrogate U\+D800"):
    tokenizer(["fine", "\ud800"])


def _moved_model(tiny_checkpoints, tmp_path):
  """The tiny model directory copied elsewhere, without the ../clip and ../vqgan it records."""
  moved = tmp_path / "elsewhere" / "model"
  shutil.copytree(tiny_checkpoints / "model", moved)
  return moved


@pytest.mark.parametrize("given, flag", [([], "--clip"), (["--clip", "clip"], "--vqgan")])
def test_model_copied_without_its_encoders_names_the_flag(given, flag, tiny_checkpoints,
                                                           tmp_path, capsys):
  moved = _moved_model(tiny_checkpoints, tmp_path)
  given = [str(tiny_checkpoints / a) if a == "clip" else a for a in given]
  line = _cli_error(capsys, _sample_main, ["generate", "--checkpoint", str(moved), "--prompt",
                                           "a", "--out", str(tmp_path / "out"), *given])
  key = flag[2:] + "_checkpoint"
  missing = tmp_path / "elsewhere" / flag[2:]
  assert line == (f"error: {missing} not found: {moved}/model.json records its {key} as "
                  f"'../{flag[2:]}', relative to the model directory, which was moved or copied "
                  f"without it; pass the checkpoint with {flag} CKPT_DIR")
  assert sorted(os.listdir(tmp_path)) == ["elsewhere"]   # no output folder


@pytest.fixture(scope="module")
def abstract_model():
  """A tiny v1 predictor with abstract parameters: enough to trace the sampler."""
  from paella_jax.models.paella import build_model
  model = build_model(dict(num_labels=32, c_hidden=32, c_clip=8, c_r=16, down_levels=[1, 1],
                           up_levels=[1, 1]))
  params = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, 8, 8), jnp.int32), jnp.zeros((1, 8)),
      jnp.zeros((1,)))["params"]))
  return model, params


@pytest.mark.parametrize("settings, message", [
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(cfg=math.nan), "cfg must be a finite number, got nan"),
    (dict(cfg=(5.0, math.inf)), "cfg must be a finite number, got inf"),
    (dict(cfg=np.array([1.0, np.nan])), "cfg must be a finite number, got nan"),
    (dict(typical_mass=0.0), r"typical_mass must lie in \(0, 1\] \(or be off\), got 0.0"),
    (dict(typical_mass=np.array([0.2, 1.5])), r"typical_mass must lie in \(0, 1\]"),
    (dict(temperature=(1.0, -0.5)), "temperatures must be >= 0"),
    (dict(temperature=np.array([[1.0, 1.0], [np.inf, 1.0]])),
     "temperature must be a finite number, got inf"),
    (dict(start_step=9), r"start_step must be an integer in \[0, steps=8\], got 9"),
    (dict(renoise_mode="later"), "renoise_mode must be one of"),
])
def test_sampler_checks_host_settings(settings, message, abstract_model):
  model, params = abstract_model
  with pytest.raises(ValueError, match=message):
    sample(model, params, np.zeros((2, 8), np.float32), jax.random.key(0), latent_shape=(8, 8),
           **settings)


def test_settings_take_device_arrays_as_host_values():
  """Per-row settings given as device arrays are read back and checked like numpy arrays."""
  from paella_jax.sampler_settings import SamplerSettings
  base = SamplerSettings.for_family("paella_v1")
  rows = base.replace(cfg=jnp.asarray([1.0, 2.0]), typical_mass=jnp.asarray([0.5, 1.0]),
                      temperature=jnp.full((2, 2), 0.5))
  np.testing.assert_array_equal(rows.cfg, [1.0, 2.0])
  assert isinstance(rows.temperature, np.ndarray) and rows.temperature.shape == (2, 2)
  with pytest.raises(ValueError, match="cfg must be a finite number, got nan"):
    base.replace(cfg=jnp.asarray([math.nan, 1.0]))
  with pytest.raises(ValueError, match="temperatures must be >= 0"):
    base.replace(temperature=jnp.asarray([[-1.0, 1.0], [1.0, 1.0]]))

@pytest.mark.parametrize("edit, expected", [
    (("c_hidden", 96), "the weights do not fit model.json's config (Paella v1 "),
    (("c_r", "x"), "model.json's config does not describe a Paella v1 model ("),
    (("kind", "paella_v3"), "model.json's config does not describe a Paella v3 model ("),
])
def test_an_edited_model_json_is_one_line(edit, expected, tiny_checkpoints, tmp_path, capsys):
  moved = _moved_model(tiny_checkpoints, tmp_path)
  description = json.loads((moved / "model.json").read_text())
  key, value = edit
  (description if key == "kind" else description["config"])[key] = value
  (moved / "model.json").write_text(json.dumps(description))
  line = _cli_error(capsys, _sample_main, ["generate", "--checkpoint", str(moved), "--prompt",
                                           "a", "--out", str(tmp_path / "out")])
  assert line.startswith(f"error: {moved}: {expected}") and line.endswith(" edited?"), line


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.__setitem__("request", []), "'list' object has no attribute"),
    (lambda d: d.pop("checkpoint"), "it lacks 'checkpoint'"),
    (lambda d: d.__setitem__("checkpoint", 5), "its checkpoint must be a path, got 5"),
    (lambda d: d["sampler"].__setitem__("steps", -3), "steps must be an integer >= 1"),
    (lambda d: d.__setitem__("sampler", "fast"), "'str' object has no attribute"),
    (lambda d: d["request"].__setitem__("seed", "x"), "seed must be an integer"),
])
def test_an_edited_sidecar_is_one_line(edit, expected, tiny_checkpoints, tmp_path, capsys):
  run_main(_sample_main, ["generate", "--checkpoint", str(tiny_checkpoints / "model"),
                          "--prompt", "a", "--batch-size", "1", "--out", str(tmp_path / "out")])
  sidecar = json.loads((tmp_path / "out" / "0000.json").read_text())
  edit(sidecar)
  (tmp_path / "edited.json").write_text(json.dumps(sidecar))
  line = _cli_error(capsys, _sample_main, ["replay", str(tmp_path / "edited.json"), "--out",
                                           str(tmp_path / "replay")])
  assert line.startswith(f"error: {tmp_path / 'edited.json'} does not describe a request this "
                         "version can replay: ") and expected in line, line
  assert not os.path.exists(tmp_path / "replay")
