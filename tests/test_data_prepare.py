"""Sources, decoding and `prepare`: a folder and a tar holding every kind of bad input; skips
counted per reason, nothing valid lost; resume; process split; tfds; on-the-fly batches."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from tests.data_fixtures import SIZE, raw_examples, tiny_encoders, write_folder, write_tar
from paella_jax.data.decode import BadInput, decode_caption, decode_image, resize_crop
from paella_jax.data.loader import ImageBatcher, RecordBatcher
from paella_jax.data.prepare import Preparer
from paella_jax.data.records import read_manifest, record_format, record_paths
from paella_jax.data.sources import (expand_paths, index_tar, memory_source, open_source,
                                     tfds_source)


@pytest.fixture(scope="module")
def encoders():
  return tiny_encoders(batch_size=8)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  write_folder(str(root / "folder"))
  os.makedirs(root / "tars")
  write_tar(str(root / "tars" / "00000.tar"))
  members = raw_examples()[0]
  write_tar(str(root / "tars" / "00001.tar"), [(f"b_{k}", f) for k, f in members[:6]])
  return root


def _records(out_dir):
  """(record format, every record in file order) of a prepared dataset."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  manifest = read_manifest(out_dir)
  source = ArrayRecordDataSource(record_paths(out_dir, manifest))
  return record_format(manifest), [source[i] for i in range(len(source))]


def _captions(out_dir):
  fmt, records = _records(out_dir)
  return [fmt.caption(r) for r in records]


def test_decode_converts_odd_images():
  grey16 = Image.fromarray(np.full((20, 20), 65535, np.uint16))
  import io
  buf = io.BytesIO()
  grey16.save(buf, "PNG")
  assert (decode_image(buf.getvalue()) == 255).all()               # 16 bit: rescaled, not clipped
  assert decode_image(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
  rgba = np.zeros((4, 4, 4), np.uint8)                              # fully transparent -> white
  assert (decode_image(rgba) == 255).all()
  with pytest.raises(BadInput, match="image_too_small"):
    decode_image(np.zeros((4, 4, 3), np.uint8), min_size=5)
  image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), np.uint8)
  assert resize_crop(image, 32, "center").shape == (32, 32, 3)
  crops = {resize_crop(image, 32, "random", np.random.default_rng(s)).tobytes() for s in range(5)}
  assert len(crops) > 1


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_prepare_skips_bad_inputs_and_keeps_every_valid_one(kind, raw, encoders, tmp_path):
  members, captions, skips = raw_examples()
  source = open_source(str(raw / "folder") if kind == "folder" else str(raw / "tars" / "00000.tar"))
  assert source.kind == kind
  manifest = Preparer(*encoders, size=SIZE, batch_size=8, threads=2).run(
      source, str(tmp_path), progress=False)
  assert manifest["skipped"] == skips
  assert manifest["examples_read"] == len(members)
  assert manifest["num_records"] == len(captions)
  assert (manifest["latent_shape"], manifest["c_clip"], manifest["num_labels"]) == ([8, 8], 32, 64)
  got = _captions(str(tmp_path))
  assert sorted(got) == sorted(captions.values())
  batch = next(RecordBatcher(str(tmp_path), batch_size=4))
  assert batch["tokens"].shape == (4, 8, 8) and batch["clip"].shape == (4, 32)
  assert batch["tokens"].min() >= 0 and batch["tokens"].max() < 64


def test_tokens_are_the_codec_encoding_of_the_center_crop(raw, encoders, tmp_path):
  codec, encoder = encoders
  source = open_source(f"folder:{raw / 'folder'}")
  Preparer(codec, encoder, size=SIZE, crop="center", batch_size=8, threads=2).run(
      source, str(tmp_path), progress=False)
  fmt, (record, *_) = _records(str(tmp_path))
  example = source.shards[0][0]   # "alpha", the first valid key in sorted order
  image = resize_crop(decode_image(example.image), SIZE, "center")[None] / 255.0
  np.testing.assert_array_equal(fmt.decode(record)["tokens"], codec.encode(image)[0])
  np.testing.assert_allclose(fmt.decode(record)["clip"],
                             encoder.encode_text([fmt.caption(record)])[0], atol=1e-5)


def test_image_embedding_condition_for_variations(encoders, tmp_path):
  """--condition image stores the CLIP image embedding of each crop (models for `vary`)."""
  from paella_jax.models.clip import preprocess_images
  codec, encoder = encoders
  images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)
  Preparer(codec, encoder, size=SIZE, batch_size=8, threads=2, condition="image").run(
      memory_source(images, ["a", "b", "c"]), str(tmp_path), progress=False)
  fmt, records = _records(str(tmp_path))
  order = [["a", "b", "c"].index(fmt.caption(r)) for r in records]
  pixels = np.asarray(preprocess_images(images[order] / 255.0,
                                        encoder.model.config.vision.image_size))
  np.testing.assert_allclose(np.stack([fmt.decode(r)["clip"] for r in records]),
                             encoder.encode_images(pixels), atol=1e-5)
  with pytest.raises(ValueError, match="condition"):
    Preparer(codec, encoder, size=SIZE, condition="audio")


def test_resume_and_process_split(raw, encoders, tmp_path):
  source = open_source(str(raw / "tars"))
  assert [s.name for s in source.shards] == ["00000", "00001"]
  preparer = Preparer(*encoders, size=SIZE, batch_size=8, threads=2)
  assert preparer.run(source, str(tmp_path), 0, 2, progress=False) is None  # 00001 not done
  assert os.path.isfile(tmp_path / "00000.json") and not os.path.exists(tmp_path / "00001.json")
  first = os.path.getmtime(tmp_path / "00000.array_record")
  manifest = preparer.run(source, str(tmp_path), 1, 2, progress=False)
  assert [s["records"] for s in manifest["shards"]] == [10, 6]
  assert os.path.getmtime(tmp_path / "00000.array_record") == first
  os.remove(tmp_path / "00001.json")                       # interrupted before the summary
  again = preparer.run(source, str(tmp_path), progress=False)
  assert os.path.getmtime(tmp_path / "00000.array_record") == first  # finished shard skipped
  assert again == manifest
  with pytest.raises(ValueError, match="crop, image_size, latent_shape"):
    Preparer(*encoders, size=16, crop="center").run(source, str(tmp_path), progress=False)
  assert expand_paths(str(raw / "tars" / "{00000..00001}.tar")) == expand_paths(str(raw / "tars"))
  with pytest.raises(FileNotFoundError, match="missing"):
    expand_paths(str(raw / "tars" / "{00000..00002}.tar"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_index_files(fmt, raw, tmp_path):
  """Index rows: paths relative to the index; a missing file and an empty caption are skips."""
  rows = [{"file": os.path.relpath(raw / "folder" / name, tmp_path), "caption": caption}
          for name, caption in [("grey.png", "grey"), ("gone.png", "missing"), ("webp.webp", "")]]
  path = tmp_path / f"index.{fmt}"
  if fmt == "jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  elif fmt == "csv":
    import csv
    with open(path, "w", newline="") as f:
      writer = csv.DictWriter(f, ["file", "caption"])
      writer.writeheader()
      writer.writerows(rows)
  else:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows), path)
  shard = open_source(str(path)).shards[0]
  outcomes = []
  for i in range(len(shard)):
    example = shard[i]
    try:
      decode_caption(example.caption)
      outcomes.append(decode_image(example.image).shape)
    except BadInput as e:
      outcomes.append(e.reason)
  assert outcomes == [(40, 40, 3), "missing_image", "empty_caption"]
  with pytest.raises(ValueError, match="no caption column"):
    open_source(str(path), caption_key="label")


def test_truncated_tar_keeps_what_precedes_the_damage(raw, tmp_path):
  data = (raw / "tars" / "00000.tar").read_bytes()
  cut = tmp_path / "cut.tar"
  cut.write_bytes(data[:len(data) // 2])
  examples = index_tar(str(cut))
  assert 0 < len(examples) < 17
  for read in examples:
    read()                                                 # reading never raises
  (tmp_path / "junk.tar").write_bytes(b"not a tar")
  assert index_tar(str(tmp_path / "junk.tar")) == []


def test_tfds_source(encoders, tmp_path):
  """tfds.data_source yields dicts of decoded arrays; nested features by "a/b" paths."""
  rng = np.random.default_rng(0)
  records = [{"image": rng.integers(0, 256, (40, 36, 3), np.uint8),
              "captions": {"text": np.array([f"caption {i}".encode(), b"other"], object)}}
             for i in range(5)]
  records[2]["image"] = rng.integers(0, 256, (4, 4, 3), np.uint8)
  records[3]["captions"]["text"] = np.array([b""], object)
  source = tfds_source("fake", caption_key="captions/text", shard_size=3, data_source=records)
  assert [len(s) for s in source.shards] == [3, 2]
  manifest = Preparer(*encoders, size=SIZE, batch_size=8, threads=2).run(
      source, str(tmp_path), progress=False)
  assert manifest["skipped"] == {"empty_caption": 1, "image_too_small": 1}
  assert sorted(_captions(str(tmp_path))) == ["caption 0", "caption 1", "caption 4"]


def test_memory_source_keeps_images_of_the_target_size_exact(encoders, tmp_path):
  """In-memory uint8 images of the output size pass unchanged (no resize, the crop is all)."""
  codec, encoder = encoders
  images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), np.uint8)
  captions = [f"scene {i}" for i in range(5)]
  Preparer(codec, encoder, size=SIZE, batch_size=8, threads=2).run(
      memory_source(images, captions), str(tmp_path), progress=False)
  fmt, records = _records(str(tmp_path))
  order = [captions.index(fmt.caption(r)) for r in records]
  tokens = np.stack([fmt.decode(r)["tokens"] for r in records])
  np.testing.assert_array_equal(tokens, codec.encode(images[order] / 255.0))


def test_on_the_fly_batches_resume_exactly(raw, encoders):
  source = open_source(str(raw / "folder"))

  def make(state=None):
    return ImageBatcher(source, *encoders, batch_size=4, size=SIZE, seed=1, state=state)
  batches = make()
  for _ in range(3):
    batch = next(batches)
  assert batch["tokens"].shape == (4, 8, 8) and batch["clip"].shape == (4, 32)
  state = batches.state()
  expected = next(batches)
  got = next(make(state))
  np.testing.assert_array_equal(got["tokens"], expected["tokens"])
  np.testing.assert_array_equal(got["clip"], expected["clip"])


def test_cli(raw, encoders, tmp_path, capsys):
  from paella_jax.encoders.clip import save_clip
  from paella_jax.encoders.vq import save_vqgan
  from paella_jax.commands.prepare import main
  codec, encoder = encoders
  save_vqgan(str(tmp_path / "vqgan"), codec.module, codec.params)
  save_clip(str(tmp_path / "clip"), encoder.model, encoder.params, encoder.tokenizer)
  main(["--source", str(raw / "tars" / "00001.tar"), "--out", str(tmp_path / "out"),
        "--vqgan", str(tmp_path / "vqgan"), "--clip", str(tmp_path / "clip"), "--size", "32",
        "--crop", "center", "--batch-size", "8", "--no-progress"])
  assert "6 records of 6 examples" in capsys.readouterr().out
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["vqgan"]["config"]["n_embed"] == 64 and manifest["config"]["crop"] == "center"
  assert manifest["clip"]["config"]["projection_dim"] == 32
  # the whole folder moved, its last shard unfinished: the rerun resumes where it stopped
  os.rename(tmp_path / "out", tmp_path / "moved")
  for name in ("vqgan", "clip"):
    os.rename(tmp_path / name, tmp_path / f"{name}_moved")
  for done in ("00001.json", "manifest.json"):
    (tmp_path / "moved" / done).unlink()
  args = ["--source", str(raw / "tars" / "00001.tar"), "--out", str(tmp_path / "moved"),
          "--clip", str(tmp_path / "clip_moved"), "--size", "32", "--crop", "center",
          "--batch-size", "8", "--no-progress"]
  main([*args, "--vqgan", str(tmp_path / "vqgan_moved")])
  assert "6 records of 6 examples" in capsys.readouterr().out
  # a VQGAN of the same shape with other weights would mix two encodings: refused
  (tmp_path / "moved" / "00001.json").unlink()
  save_vqgan(str(tmp_path / "other"), codec.module,
             jax.tree.map(lambda p: np.asarray(p) + 1, codec.params))
  with pytest.raises(ValueError, match=r"other settings \(vqgan differ"):
    main([*args, "--vqgan", str(tmp_path / "other")])


TFDS_BUILDER = """
import sys
import numpy as np
import tensorflow_datasets as tfds


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
        "caption": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(6):
      yield i, {"image": rng.integers(0, 256, (40, 36, 3), np.uint8),
                "caption": f"caption {i}" if i else ""}


if __name__ == "__main__":
  TinyCaptions(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
"""


def test_tfds_by_name_without_tensorflow(encoders, tmp_path):
  """A real tfds ArrayRecord dataset, built on disk by a script (with Tensor features: tfds
  `Image` features need TensorFlow), read by name through `tfds.data_source`."""
  pytest.importorskip("tensorflow_datasets")
  import subprocess
  import sys
  (tmp_path / "build.py").write_text(TFDS_BUILDER)
  run = subprocess.run([sys.executable, str(tmp_path / "build.py"), str(tmp_path / "tfds")],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  source = open_source("tfds:tiny_captions", data_dir=str(tmp_path / "tfds"))
  manifest = Preparer(*encoders, size=SIZE, batch_size=8, threads=2).run(
      source, str(tmp_path / "out"), progress=False)
  assert manifest["skipped"] == {"empty_caption": 1}
  assert sorted(_captions(str(tmp_path / "out"))) == [f"caption {i}" for i in range(1, 6)]


def test_training_config_sources(raw, encoders, tmp_path):
  """configs/tiny.py's model fits the tiny encoders: data.source "records" and "images"."""
  from configs import tiny
  from paella_jax.encoders.clip import save_clip
  from paella_jax.encoders.vq import save_vqgan
  from paella_jax.data.loader import batcher_from_config
  codec, encoder = encoders
  Preparer(codec, encoder, size=SIZE, batch_size=8, threads=2).run(
      open_source(str(raw / "folder")), str(tmp_path / "records"), progress=False)
  config = tiny.get_config()
  config.train.batch_size = 4
  config.data.update(source="records", path=str(tmp_path / "records"))
  batches = batcher_from_config(config, rows=slice(2, 4))
  assert next(batches)["tokens"].shape == (2, 8, 8)
  config.latent_shape = (4, 4)
  with pytest.raises(ValueError, match="latents"):
    batcher_from_config(config)
  config.latent_shape = (8, 8)
  save_vqgan(str(tmp_path / "vqgan"), codec.module, codec.params)
  save_clip(str(tmp_path / "clip"), encoder.model, encoder.params, encoder.tokenizer)
  config.data.update(source="images", path=str(raw / "folder"))
  config.data.vqgan, config.data.clip, config.data.image_size = (
      str(tmp_path / "vqgan"), str(tmp_path / "clip"), SIZE)
  batch = next(batcher_from_config(config))
  assert batch["tokens"].shape == (4, 8, 8) and batch["clip"].shape == (4, 32)
