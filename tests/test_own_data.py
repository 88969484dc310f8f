"""Your own images through every stage: presets, stage 1 from a folder, the random CLIP, and
the whole pipeline (`paella-train --config folder --config.data.path=FOLDER`)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from paella_jax.data.scenes import make_dataset
from paella_jax.images import save_png
from tests.conftest import ROOT


def write_folder(root, count: int, seed: int = 0, size: int = 32):
  """`count` generated scenes as NAME.png + NAME.txt (the caption sidecar)."""
  images, scenes = make_dataset(count, seed, size=size)
  os.makedirs(root, exist_ok=True)
  for i, (image, scene) in enumerate(zip(images, scenes)):
    save_png(os.path.join(root, f"{i:03d}.png"), image)
    with open(os.path.join(root, f"{i:03d}.txt"), "w") as f:
      f.write(scene.caption)
  return root


# ------------------------------------------------------------------------------------ presets

def test_presets_resolve_by_name_and_paths_pass_through(tmp_path):
  from paella_jax.configs import PRESETS_DIR, config_file, load, presets, with_config_file
  assert {"tiny", "demo", "folder", "paella_v1", "vqgan_tiny", "clip_tiny"} <= set(presets())
  assert config_file("tiny") == config_file("tiny.py") == os.path.join(PRESETS_DIR, "tiny.py")
  own = tmp_path / "own.py"
  own.write_text("from paella_jax.configs import folder\n\n"
                 "def get_config():\n  c = folder.get_config()\n  c.data.path = 'photos'\n"
                 "  return c\n")
  assert config_file(str(own)) == str(own)
  config = load(str(own))
  assert config.job == "pipeline" and config.vqgan.data.path == "photos"  # one data section
  assert with_config_file(["p", "--config", "demo", "--config.seed=1"]) == [
      "p", "--config", os.path.join(PRESETS_DIR, "demo.py"), "--config.seed=1"]
  assert with_config_file(["p", "--config=tiny:arg"]) == [
      "p", f"--config={os.path.join(PRESETS_DIR, 'tiny.py')}:arg"]
  with pytest.raises(ValueError, match="unknown config 'tinyy'.*tiny_v3"):
    config_file("tinyy")
  with pytest.raises(FileNotFoundError, match=r"elsewhere/tiny.py \(the preset is named"):
    config_file("elsewhere/tiny.py")


def test_every_trainable_preset_names_its_job():
  # paella_jax.commands.train.JOBS, not imported: it defines absl flags that
  # paella_jax.commands.aot also defines, and tests share a process.
  from paella_jax.configs import load
  JOBS = ("pipeline", "vqgan", "paella")
  jobs = {name: load(name).job for name in ("demo", "demo_v3", "demo_lora", "folder", "tiny",
                                            "tiny_v3", "paella_v1", "paella_v3", "vqgan_tiny",
                                            "vqgan_sber_f8")}
  assert set(jobs.values()) == set(JOBS)
  assert jobs["folder"] == jobs["demo"] == "pipeline" and jobs["vqgan_tiny"] == "vqgan"


def test_a_config_without_a_job_fails_in_one_line(tmp_path):
  (tmp_path / "nojob.py").write_text(
      "import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict()\n")
  proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "nojob.py"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: the config's job is None; expected one of pipeline, vqgan, paella (the field "
      "`job` of the config: set it, or build on a preset)")


# ---------------------------------------------------------------------------- stage 1 images

def test_stage1_images_from_a_folder_skip_bad_files(tmp_path):
  from paella_jax.configs import vqgan_tiny
  from paella_jax.data.read import open_data, pick_captions, stage1_images
  folder = write_folder(tmp_path / "photos", 6, size=48)
  (tmp_path / "photos" / "broken.png").write_bytes(b"not a png")
  save_png(str(tmp_path / "photos" / "small.png"), np.zeros((8, 8, 3)))
  data = vqgan_tiny.get_config().data
  data.path = str(folder)
  images = stage1_images(data, 32)
  assert images.shape == (6, 32, 32, 3) and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 1.0
  captions = pick_captions(open_data(data), 3)
  assert len(captions) == 3 and all(c.startswith("a ") for c in captions)
  data.path = ""
  with pytest.raises(ValueError, match="data.path is empty"):
    stage1_images(data, 32)
  data.update(source="scenes", num_images=5)
  np.testing.assert_array_equal(stage1_images(data, 32), make_dataset(5, 0)[0])


@pytest.mark.slow
def test_stage1_from_a_folder_resumes_exactly_and_exports(tmp_path):
  """The `vqgan` job: interrupted after 2 steps and resumed, the params are those of a run of
  4 steps straight; the exported VQGAN is the final state's."""
  from paella_jax.configs import vqgan_tiny
  from paella_jax.encoders.vq import load_vqgan
  from paella_jax.training.vqgan_loop import train_vqgan_job
  folder = write_folder(tmp_path / "photos", 16)

  def config(total):  # a smaller VQGAN than vqgan_tiny's, on 16x16 crops of the 32x32 images
    c = vqgan_tiny.get_config()
    c.model.update(ch=8, ch_mult=(1, 2), norm_groups=4, z_channels=8, embed_dim=8, n_embed=16)
    c.image_size = 16
    c.data.update(path=str(folder), crop="random")
    c.train.update(total_steps=total, batch_size=4, log_every=2, checkpoint_every=2)
    return c

  _, straight = train_vqgan_job(config(4), str(tmp_path / "a"), progress=False)
  train_vqgan_job(config(2), str(tmp_path / "b"), progress=False)
  _, resumed = train_vqgan_job(config(4), str(tmp_path / "b"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  _, exported = load_vqgan(tmp_path / "b" / "model")
  jax.tree.map(np.testing.assert_array_equal, exported, resumed.params)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert steps == [2, 4]


@pytest.mark.slow
def test_stage1_command_on_a_folder(tmp_path):
  """`paella-train --config vqgan_tiny --config.data.path=FOLDER` writes the run's files."""
  folder = write_folder(tmp_path / "photos", 16)
  proc = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", "vqgan_tiny",
       f"--config.data.path={folder}", "--workdir", "vq", "--noprogress",
       "--config.train.total_steps=2", "--config.train.checkpoint_every=2"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "done: VQGAN written to vq/model" in proc.stdout
  assert sorted(os.listdir(tmp_path / "vq")) == ["checkpoints", "metrics.jsonl", "model",
                                                 "tensorboard"]


# --------------------------------------------------------------------------------- random CLIP

def test_saved_random_clip_reloads_bit_identical(tmp_path):
  from paella_jax.configs import clip_tiny
  from paella_jax.commands.convert import main
  from paella_jax.encoders.clip import ClipEncoder, load_clip, random_clip
  out = str(tmp_path / "clip")
  main(["clip-random", "--config", "clip_tiny", out])
  model, params, tokenizer = load_clip(out)
  fresh_model, fresh_params, fresh_tokenizer = random_clip(clip_tiny.get_config().model)
  assert model.config == fresh_model.config
  assert tokenizer.to_config() == fresh_tokenizer.to_config()
  assert jax.tree.structure(params) == jax.tree.structure(fresh_params)
  jax.tree.map(np.testing.assert_array_equal, params, fresh_params)
  prompts = ["a red circle in the top left", "a photo of a cat"]
  np.testing.assert_array_equal(ClipEncoder(model, params, tokenizer).encode_text(prompts),
                                ClipEncoder(*random_clip(clip_tiny.get_config().model))
                                .encode_text(prompts))
  with pytest.raises(FileExistsError):
    main(["clip-random", out])
  with pytest.raises(ValueError, match="random_weights=True"):
    main(["clip-random", "--config", "clip_vit_g14", str(tmp_path / "g14")])


# ------------------------------------------------------------------------- the whole pipeline

@pytest.mark.slow
def test_folder_pipeline_end_to_end_then_paella_sample(tmp_path):
  """64 captioned images through `paella-train --config folder` with few steps: every stage's
  output, a report, a rerun that skips the trained stages, and a model paella-sample samples."""
  folder = write_folder(tmp_path / "photos", 64, seed=3)
  command = [sys.executable, str(ROOT / "train.py"), "--config", "folder",
             f"--config.data.path={folder}", "--workdir", "run", "--noprogress",
             "--config.vqgan.train.total_steps=4", "--config.vqgan.train.lr_decay_steps=2",
             "--config.vqgan.train.checkpoint_every=4", "--config.paella.train.total_steps=4",
             "--config.paella.train.warmup_steps=1", "--config.paella.train.checkpoint_every=4",
             "--config.eval.captions=3", "--config.eval.samples_per_caption=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = tmp_path / "run"
  assert {"vqgan", "clip", "data", "paella", "samples", "report.json"} <= set(os.listdir(run))
  report = json.load(open(run / "report.json"))
  captions = {open(folder / name).read() for name in os.listdir(folder) if name.endswith(".txt")}
  assert len(report["captions"]) == 3 and set(report["captions"]) <= captions
  assert set(report["stage_minutes"]) == {"vqgan", "prepare", "paella", "evaluate"}
  assert report["last_metrics"]["vqgan"]["step"] == 4
  assert report["last_metrics"]["paella"]["step"] == 4
  assert json.load(open(run / "data" / "manifest.json"))["num_records"] == 64
  assert f'--prompt "{report["captions"][0]}"' in proc.stdout

  stamps = {d: os.path.getmtime(run / d / "model" / "model.json") for d in ("vqgan", "paella")}
  proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert stamps == {d: os.path.getmtime(run / d / "model" / "model.json") for d in stamps}
  assert "training" not in proc.stdout  # neither stage trained again

  from paella_jax.commands.sample import main
  main(["--checkpoint", str(run / "paella" / "model"), "--prompt", report["captions"][0],
        "--batch-size", "2", "--out", str(tmp_path / "samples")])
  assert np.load(tmp_path / "samples" / "codes.npy").shape == (2, 8, 8)
  assert (tmp_path / "samples" / "grid.png").is_file()
