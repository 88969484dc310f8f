"""FID statistics and distance, CLIP score, evaluation data, and `python -m paella_jax.eval`."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from paella_jax.eval.data import open_eval_data
from paella_jax.eval.fid import GaussianStats, frechet_distance, load_stats, save_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frechet_distance_closed_form_for_diagonal_gaussians():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
  v1, v2 = rng.uniform(0.1, 3, 64), rng.uniform(0.1, 3, 64)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert abs(frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1))) < 1e-9
  # Rotating both Gaussians by one orthogonal matrix leaves the distance unchanged.
  q = np.linalg.qr(rng.normal(size=(64, 64)))[0]
  rotated = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
  np.testing.assert_allclose(rotated, want, rtol=1e-8)


def test_frechet_distance_singular_covariances_use_eps():
  """Rank-deficient covariances (fewer samples than dimensions): finite, near the closed form."""
  v1, v2 = np.zeros(16), np.zeros(16)
  v1[:4], v2[2:6] = 1.0, 4.0
  got = frechet_distance(np.zeros(16), np.diag(v1), np.ones(16), np.diag(v2))
  want = 16 + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  assert np.isfinite(got) and abs(got - want) < 1e-2
  with pytest.raises(ValueError, match="do not match"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_gaussian_stats_stream_equals_numpy(tmp_path):
  x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32) * 3 + 1
  stats = GaussianStats(8)
  for start in range(0, 300, 70):
    stats.update(x[start:start + 70])
  mu, sigma = stats.mean_cov()
  np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9)
  path = save_stats(str(tmp_path / "s.npz"), mu, sigma, images=300)
  np.testing.assert_array_equal(load_stats(path)[1], sigma)
  np.savez(tmp_path / "bad.npz", mean=mu)
  with pytest.raises(ValueError, match="no 'mu'"):
    load_stats(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError):
    load_stats(str(tmp_path / "missing.npz"))
  with pytest.raises(ValueError, match=r"\(N, 8\)"):
    stats.update(np.zeros((2, 3)))


def test_clip_score_is_100_x_clamped_cosine(tiny_checkpoints):
  from paella_jax.encoders.clip import ClipEncoder, load_clip
  from paella_jax.eval.clip_score import ClipScorer
  from paella_jax.models.clip import preprocess_images
  model, params, tokenizer = load_clip(tiny_checkpoints / "clip")
  images = np.random.default_rng(2).uniform(size=(3, 40, 48, 3)).astype(np.float32)
  captions = ["a red circle", "a blue square", "a green triangle"]
  got = ClipScorer(ClipEncoder(model, params, tokenizer, batch_size=2))(images, captions)
  pixels = preprocess_images(images, model.config.vision.image_size)
  img = np.asarray(model.apply({"params": params}, pixels, method="encode_image"), np.float64)
  txt = np.asarray(model.apply({"params": params}, tokenizer(captions), method="encode_text"),
                   np.float64)
  cos = (img * txt).sum(-1) / np.linalg.norm(img, axis=-1) / np.linalg.norm(txt, axis=-1)
  np.testing.assert_allclose(got, np.maximum(100 * cos, 0), atol=1e-3)
  with pytest.raises(ValueError, match="vision tower"):
    ClipScorer(ClipEncoder(*load_clip(tiny_checkpoints / "clip", text_only=True)))


def write_coco(root, num_images=6, size=(40, 56)):
  """A COCO-layout folder: annotations/captions_val2014.json and val2014/*.jpg."""
  os.makedirs(root / "annotations")
  os.makedirs(root / "val2014")
  images, annotations = [], []
  rng = np.random.default_rng(3)
  for i in range(num_images):
    name = f"COCO_val2014_{i:012d}.jpg"
    Image.fromarray(np.full((*size, 3), 20 * i, np.uint8)).save(root / "val2014" / name)
    images.append({"id": 100 + i, "file_name": name, "height": size[0], "width": size[1]})
    annotations += [{"id": 10 * i + k, "image_id": 100 + i, "caption": f" image {i} caption {k}"}
                    for k in range(int(rng.integers(1, 4)))]
  with open(root / "annotations" / "captions_val2014.json", "w") as f:
    json.dump({"images": images, "annotations": annotations}, f)
  return root


def test_coco_folder_pairs_and_references(tmp_path):
  root = write_coco(tmp_path / "coco")
  data = open_eval_data(str(root), num_samples=4, seed=1)
  again = open_eval_data(str(root / "annotations" / "captions_val2014.json"), 4, seed=1)
  assert data.captions == again.captions and len(set(data.captions)) == 4
  batches = list(data.references(16, batch_size=3))
  assert [b.shape for b in batches] == [(3, 16, 16, 3), (1, 16, 16, 3)]
  for caption, image in zip(data.captions, np.concatenate(batches)):
    i = int(caption.split()[1])                 # "image I caption K": the image's own caption
    assert abs(int(image.mean()) - 20 * i) <= 1
  with pytest.raises(ValueError, match="cannot draw 7"):
    open_eval_data(str(root), num_samples=7)
  with pytest.raises(FileNotFoundError, match="captions_val"):
    open_eval_data(str(tmp_path), num_samples=1)
  with pytest.raises(FileNotFoundError, match="image folder"):
    open_eval_data(str(root), num_samples=1, images_dir=str(tmp_path / "nowhere"))


def test_demo_data_of_named_shapes_and_their_adherence_split():
  """"demo:SHAPE,..." takes every prompt of those shapes; the new shape's scenes are scored
  apart ("new_shapes"), and the references are read back as their prompts."""
  from paella_jax.eval.adherence import score_by_split
  data = open_eval_data("demo:rectangle,circle", 96, seed=2)
  assert len(data.captions) == 96 and data.name == "demo-rectangle-circle-n96-s2"
  assert {s.shape for s in data.scenes} == {"rectangle", "circle"}
  assert data.captions[0] == data.scenes[0].caption == "a red rectangle in the top left"
  images = np.concatenate(list(data.references(32, batch_size=40))) / 255.0
  result = score_by_split(images, data.scenes)
  assert result["new_shapes"]["count"] == 48 and result["new_shapes"]["all"] == 1.0
  assert result["seen"]["count"] + result["held_out"]["count"] == 48
  assert len(open_eval_data("demo", 72).captions) == 72
  with pytest.raises(ValueError, match="unknown shape.*hexagon"):
    open_eval_data("demo:hexagon", 8)


def test_tfds_coco_captions_layout():
  """tfds coco_captions records: a decoded image and a sequence of captions (first one used)."""
  from paella_jax.eval.data import coco_tfds
  records = [{"image": np.full((30, 20, 3), 20 * i, np.uint8),
              "captions": {"id": np.arange(2), "text": np.array([f"image {i} a".encode(), b"other"],
                                                                 dtype=object)}}
             for i in range(5)]
  data = coco_tfds("coco_captions", "val", num_samples=3, seed=0, data_source=records)
  (batch,) = data.references(8, batch_size=4)
  assert batch.shape == (3, 8, 8, 3) and data.name.startswith("tfds-coco_captions-val")
  for caption, image in zip(data.captions, batch):
    assert caption.endswith(" a") and abs(int(image.mean()) - 20 * int(caption.split()[1])) <= 1


@pytest.fixture(scope="module")
def eval_checkpoints(tiny_checkpoints, tmp_path_factory):
  """The tiny checkpoints, a copy marked as the demo's (random CLIP), and a random Inception
  that reads 75x75 inputs (cheap on a CPU; the real one resizes to 299)."""
  from paella_jax.encoders.inception import save_inception
  from paella_jax.models.inception import InceptionV3
  root = tmp_path_factory.mktemp("eval")
  demo = root / "demo"
  shutil.copytree(tiny_checkpoints, demo)
  desc = json.load(open(demo / "clip" / "model.json"))
  desc["meta"]["random_weights"] = True
  json.dump(desc, open(demo / "clip" / "model.json", "w"))
  inception = InceptionV3(resize_to=75)
  shapes = jax.eval_shape(inception.init, jax.random.key(0), np.zeros((1, 75, 75, 3)))["params"]
  rng = np.random.default_rng(0)             # He-normal kernels, small biases: no compilation
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
                                   if len(s.shape) == 4 else rng.normal(size=s.shape) * 0.1
                                   ).astype(np.float32), shapes)
  save_inception(root / "inception", inception, params)
  return root


def run_eval(*args, devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "paella_jax.eval", "--no-progress", *args],
                        check=True, cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_eval_command_on_coco_folder_fid_clip_score_sweep(tiny_checkpoints, eval_checkpoints,
                                                          tmp_path):
  """Sharded over 2 (virtual) devices: FID and CLIP score per guidance weight, cached stats.
  (~2 minutes on 2 shared cores, mostly compiling the Inception.)"""
  coco = write_coco(tmp_path / "coco", num_images=8)
  out, cache = tmp_path / "out", tmp_path / "cache"
  args = [f"--checkpoint={tiny_checkpoints / 'model'}", f"--data={coco}", "--num-samples=8",
          "--batch-size=8", f"--inception={eval_checkpoints / 'inception'}",
          f"--clip-score-model={tiny_checkpoints / 'clip'}", f"--stats-cache={cache}",
          f"--out={out}", "--cfg", "1", "4"]
  run_eval(*args, devices=2)
  report = json.load(open(out / "report.json"))
  assert report["num_samples"] == 8 and report["devices"].startswith("2 x")
  assert [r["cfg"] for r in report["results"]] == [1.0, 4.0]
  for r in report["results"]:
    assert np.isfinite(r["fid"]) and r["fid"] > 0 and 0 <= r["clip_score"] <= 100
    assert "adherence" not in r
  assert report["results"][0]["fid"] != report["results"][1]["fid"]
  (cached,) = os.listdir(cache)
  assert report["reference_stats"] == str(cache / cached)
  assert Image.open(out / "samples_cfg4.png").size[0] > 32


def test_eval_command_reports_demo_adherence(eval_checkpoints, tmp_path):
  """A checkpoint whose text encoder is the demo's random CLIP: the demo's scenes, adherence."""
  run_eval(f"--checkpoint={eval_checkpoints / 'demo' / 'model'}", "--num-samples=144",
           "--batch-size=72", f"--out={tmp_path}")
  (result,) = json.load(open(tmp_path / "report.json"))["results"]
  assert result["cfg"] == 5.0 and "fid" not in result and "clip_score" not in result
  assert result["adherence"]["seen"]["count"] == 136
  assert result["adherence"]["held_out"]["count"] == 8
  assert 0 <= result["adherence"]["seen"]["colour"] <= 1


def test_eval_command_needs_data_for_other_models(tiny_checkpoints, tmp_path):
  with pytest.raises(subprocess.CalledProcessError) as e:
    run_eval(f"--checkpoint={tiny_checkpoints / 'model'}", f"--out={tmp_path}")
  assert "pass --data" in e.value.stderr


def test_eval_command_on_a_v3_checkpoint_clip_score_and_adherence(v3_model, tiny_checkpoints,
                                                                 tmp_path):
  """paella-eval on a tiny Paella v3 (ByT5 + CLIP conditioning, guided against the empty
  prompt): the demo's scenes, CLIP score and adherence for the checkpoint's (start, end)
  guidance, a number and "off"; the first two differ from "off"."""
  from paella_jax.commands.eval import main
  report = main([f"--checkpoint={v3_model}", "--data=demo", "--num-samples=8", "--batch-size=8",
                 f"--clip-score-model={tiny_checkpoints / 'clip'}", f"--out={tmp_path}",
                 "--no-progress", "--cfg", "8", "off"])
  assert report["kind"] == "paella_v3" and report["sampling"]["cfg"] == [8.0, 8.0]
  assert [r["cfg"] for r in report["results"]] == [8.0, "off"]
  for r in report["results"]:
    assert 0 <= r["clip_score"] <= 100 and r["adherence"]["seen"]["count"] == 8
    assert "held_out" not in r["adherence"]  # the first 8 scenes are all seen ones
  assert {"samples_cfg8.png", "samples_cfgoff.png", "report.json"} <= set(os.listdir(tmp_path))
  guided, unguided = (np.asarray(Image.open(tmp_path / f"samples_cfg{w}.png")) for w in ("8", "off"))
  assert not np.array_equal(guided, unguided)
  default = main([f"--checkpoint={v3_model}", "--data=demo", "--num-samples=8", "--batch-size=8",
                  f"--out={tmp_path / 'default'}", "--no-progress"])
  assert default["results"][0]["cfg"] == [8.0, 8.0]
  assert (tmp_path / "default" / "samples_cfg8-8.png").is_file()


@pytest.mark.slow
def test_eval_command_fid_on_a_v3_checkpoint(v3_model, eval_checkpoints, tmp_path):
  """FID of a tiny Paella v3 on a COCO folder, with its reference statistics."""
  from paella_jax.commands.eval import main
  coco = write_coco(tmp_path / "coco", num_images=8)
  report = main([f"--checkpoint={v3_model}", f"--data={coco}", "--num-samples=8",
                 "--batch-size=8", f"--inception={eval_checkpoints / 'inception'}",
                 f"--stats-cache={tmp_path / 'cache'}", f"--out={tmp_path / 'out'}",
                 "--no-progress"])
  (result,) = report["results"]
  assert np.isfinite(result["fid"]) and result["fid"] > 0 and "adherence" not in result
