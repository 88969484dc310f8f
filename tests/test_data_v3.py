"""Paella v3 training data: `prepare --family v3` records (VQ tokens, CLIP text and image
embeddings, ByT5 byte ids or states), the bucketing loader, and the v3 train step that runs the
frozen ByT5 encoder on byte ids."""

import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_v3
from tests.data_fixtures import SIZE, tiny_encoders
from paella_jax.byt5_tokenizer import ByT5Tokenizer
from paella_jax.data import scenes
from paella_jax.data.loader import RecordBatcher, V3RecordBatcher, bucket_length, fit_byt5
from paella_jax.data.prepare import V3Preparer
from paella_jax.data.records import read_manifest, record_format, record_paths
from paella_jax.data.sources import memory_source

BUCKETS = (8, 16, 32, 64)


def scene_data(n=12, seed=0):
  """n scene images (uint8) with unique captions of 5 to 80 bytes, mostly short (a batch of 4
  often fits a bucket below the longest)."""
  images, chosen = scenes.make_dataset(n, seed, size=SIZE)
  short, medium = (lambda s: s.colour), (lambda s: f"a {s.colour} {s.shape}")
  forms = [short, short, medium, short, lambda s: s.caption,
           lambda s: f"{s.caption}, drawn flat on a light grey background, nothing else"]
  captions = [f"{i} {forms[i % 6](s)}" for i, s in enumerate(chosen)]
  return (images * 255).round().astype(np.uint8), captions


def config(latent=(8, 8), **train):
  """tiny_v3 fitted to the tiny VQGAN (8x8 codes of 64) and CLIP (32-d)."""
  c = tiny_v3.get_config()
  c.latent_shape = latent
  c.model.clip_embd = 32
  c.data.update(byt5_buckets=BUCKETS)
  c.train.update(**train)
  return c


@pytest.fixture(scope="module")
def encoders():
  return tiny_encoders(batch_size=8)


@pytest.fixture(scope="module")
def byt5_encoder():
  from paella_jax.encoders.byt5 import ByT5Encoder, random_t5_encoder
  model, params, _ = random_t5_encoder(tiny_v3.get_config().byt5.model)
  return ByT5Encoder(model, params, ByT5Tokenizer(64), batch_size=8, pad_multiple=8)


@pytest.fixture(scope="module")
def prepared(encoders, tmp_path_factory):
  """A v3 dataset of byte ids, in two shards of 6."""
  out = str(tmp_path_factory.mktemp("v3_ids"))
  images, captions = scene_data()
  V3Preparer(*encoders, byt5_max_length=64, size=SIZE, crop="center", batch_size=8,
             threads=2).run(memory_source(images, captions, shard_size=6), out, progress=False)
  return out


def records(out_dir):
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  manifest = read_manifest(out_dir)
  source = ArrayRecordDataSource(record_paths(out_dir, manifest))
  fmt = record_format(manifest)
  return manifest, fmt, [source[i] for i in range(len(source))]


def test_v3_records_hold_tokens_clip_text_and_image_and_byte_ids(prepared, encoders):
  from paella_jax.encoders.clip import preprocess_v3
  codec, clip = encoders
  manifest, fmt, recs = records(prepared)
  images, captions = scene_data()
  assert manifest["format"] == "paella-jax-records-v3/1" and manifest["byt5"] == "ids"
  assert manifest["num_records"] == 12 and manifest["byt5_max_length"] == 64
  np.testing.assert_allclose(manifest["empty"]["clip"], clip.encode_text([""])[0], atol=1e-6)
  order = [captions.index(fmt.caption(r)) for r in recs]
  assert sorted(order) == list(range(12))
  floats = images[order] / 255.0
  decoded = [fmt.decode(r) for r in recs]
  np.testing.assert_array_equal(np.stack([d["tokens"] for d in decoded]), codec.encode(floats))
  np.testing.assert_allclose(np.stack([d["clip"] for d in decoded]),
                             clip.encode_text([captions[i] for i in order]), atol=1e-5)
  np.testing.assert_allclose(np.stack([d["clip_image"] for d in decoded]),
                             clip.encode_images(np.asarray(preprocess_v3(floats, 32))), atol=1e-5)
  tokenizer = ByT5Tokenizer(64)
  for d, i in zip(decoded, order):
    np.testing.assert_array_equal(d["byt5_ids"], tokenizer(captions[i])[0])
  assert max(len(d["byt5_ids"]) for d in decoded) == 64  # the longest captions are cut to 64
  with pytest.raises(ValueError, match="Paella v3"):
    RecordBatcher(prepared, batch_size=4)


def test_loader_pads_byte_ids_to_the_smallest_bucket(prepared):
  batches = V3RecordBatcher(prepared, batch_size=4, buckets=BUCKETS, seed=0)
  batches.check((8, 8), 64, 32, "ids", 40)
  with pytest.raises(ValueError, match="config.data.byt5"):
    batches.check((8, 8), 64, 32, "states", 40)
  seen = set()
  for _ in range(9):
    batch = next(batches)
    assert sorted(batch) == ["byt5_ids", "byt5_mask", "clip", "clip_empty", "clip_image",
                             "tokens"]
    ids, mask = batch["byt5_ids"], batch["byt5_mask"]
    lengths = mask.sum(1)
    assert ids.shape[1] == bucket_length(lengths.max(), BUCKETS)
    np.testing.assert_array_equal(ids[np.arange(4), lengths - 1], 1)  # </s> last
    assert (ids[~mask] == 0).all() and (mask == (np.arange(ids.shape[1]) < lengths[:, None])).all()
    assert batch["tokens"].shape == (4, 8, 8) and batch["clip_image"].shape == (4, 32)
    seen.add(ids.shape[1])
  assert len(seen) > 1
  with pytest.raises(ValueError, match="exceed the longest bucket"):
    V3RecordBatcher(prepared, batch_size=4, buckets=(8, 32))


def test_hidden_states_option(encoders, byt5_encoder, tmp_path):
  """--byt5 states: each record holds the encoder's states at its tokens in bfloat16, and the
  manifest the empty caption's; the loader pads them to the bucket with byt5_empty rows."""
  images, captions = scene_data(4, seed=1)
  V3Preparer(*encoders, byt5="states", byt5_encoder=byt5_encoder, byt5_max_length=64,
             size=SIZE, crop="center", batch_size=8, threads=2).run(
      memory_source(images, captions), str(tmp_path), progress=False)
  manifest, fmt, recs = records(str(tmp_path))
  assert manifest["byt5"] == "states" and manifest["byt5_dim"] == 40
  states, mask = byt5_encoder.encode(captions)
  for r in recs:
    i = captions.index(fmt.caption(r))
    got = fmt.decode(r)["byt5"].astype(np.float32)
    np.testing.assert_allclose(got, states[i, :mask[i].sum()], rtol=1e-2, atol=1e-2)
  empty = np.asarray(manifest["empty"]["byt5"])
  assert empty.shape == (1, 40)
  np.testing.assert_allclose(empty, byt5_encoder.encode([""])[0][0, :1], rtol=1e-2, atol=1e-2)
  batch = next(V3RecordBatcher(str(tmp_path), batch_size=4, buckets=BUCKETS))
  length = bucket_length(mask.sum(1).max(), BUCKETS)
  assert batch["byt5"].shape == (4, length, 40) and batch["byt5"].dtype == np.float32
  assert batch["byt5_empty"].shape == (4, 1, 40)
  assert (batch["byt5"][~batch["byt5_mask"]] == 0).all()


def test_prepare_v3_resumes_and_refuses_other_settings(encoders, tmp_path):
  images, captions = scene_data(8, seed=2)
  source = memory_source(images, captions, shard_size=4)
  preparer = V3Preparer(*encoders, byt5_max_length=64, size=SIZE, batch_size=8, threads=2)
  assert preparer.run(source, str(tmp_path), 0, 2, progress=False) is None
  first = os.path.getmtime(tmp_path / "memory-00000.array_record")
  manifest = preparer.run(source, str(tmp_path), 1, 2, progress=False)
  assert [s["records"] for s in manifest["shards"]] == [4, 4]
  os.remove(tmp_path / "memory-00001.json")              # interrupted before the summary
  again = preparer.run(source, str(tmp_path), progress=False)
  assert os.path.getmtime(tmp_path / "memory-00000.array_record") == first
  assert again == manifest
  with pytest.raises(ValueError, match="byt5_max_length"):
    V3Preparer(*encoders, byt5_max_length=32, size=SIZE).run(source, str(tmp_path),
                                                            progress=False)


def test_prepare_command_v3(tiny_checkpoints, tmp_path, capsys):
  """paella-prepare --family v3 from a folder of images with .txt captions."""
  from PIL import Image
  from paella_jax.commands.prepare import main
  images, captions = scene_data(3, seed=3)
  for i, (image, caption) in enumerate(zip(images, captions)):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / f"{i}.txt").write_text(caption)
  out = tmp_path / "out"
  main(["--source", str(tmp_path), "--out", str(out), "--family", "v3", "--size", "32",
        "--vqgan", str(tiny_checkpoints / "vqgan"), "--clip", str(tiny_checkpoints / "clip"),
        "--byt5-max-length", "64", "--no-progress", "--batch-size", "4"])
  assert "3 records" in capsys.readouterr().out
  manifest = read_manifest(str(out))
  assert manifest["format"] == "paella-jax-records-v3/1" and manifest["byt5"] == "ids"
  assert manifest["config"]["family"] == "v3"


@pytest.mark.slow
def test_padding_does_not_change_the_loss(prepared):
  """A batch of byte ids padded to a longer bucket gives the same loss: the ByT5 encoder and the
  predictor mask the padding."""
  from paella_jax.training.partition import Trainer
  from paella_jax.training.step import loss_and_metrics
  cfg = config(byt5_drop_prob=0.0, clip_keep_prob=1.0, clip_image_keep_prob=1.0)
  trainer = Trainer.create(cfg)
  (text_params,) = trainer.frozen_args
  leaves, tree = jax.tree.flatten(trainer.init().params)  # random weights: a fresh model's
  keys = jax.random.split(jax.random.key(1), len(leaves))  # logits ignore the conditioning
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  encode = lambda ids, mask: trainer.text_encoder.apply({"params": text_params}, ids,
                                                        attention_mask=mask)
  batches = V3RecordBatcher(prepared, batch_size=4, buckets=BUCKETS, seed=0)
  batch = next(b for b in batches if b["byt5_ids"].shape[1] < 32)
  jitted = jax.jit(lambda b: loss_and_metrics(params, trainer.model, b, jax.random.key(3),
                                              cfg.train, encode)[0])
  loss = lambda b: jitted({k: jnp.asarray(v) for k, v in b.items()})
  np.testing.assert_allclose(loss(batch), loss(fit_byt5(batch, 64)), rtol=2e-6)
  unmasked = dict(fit_byt5(batch, 64), byt5_mask=np.ones((4, 64), bool))
  assert abs(float(loss(unmasked)) - float(loss(batch))) > 1e-4  # the mask is what keeps it


@pytest.mark.slow
def test_a_run_compiles_one_step_per_bucket_and_learns(prepared, tmp_path, caplog):
  """train() on the v3 records: the step compiles once per ByT5 bucket the batches use (counted
  from jax's compile log), and the loss falls on the tiny dataset."""
  from paella_jax.training.loop import train
  cfg = config(batch_size=4, total_steps=30, log_every=1, checkpoint_every=1000,
               warmup_steps=5, learning_rate=1e-2)
  cfg.data.update(source="records", path=prepared)
  batches = V3RecordBatcher(prepared, batch_size=4, buckets=BUCKETS, seed=cfg.train.seed)
  used = {next(batches)["byt5_ids"].shape[1] for _ in range(30)}
  assert len(used) > 1
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"):
      train(cfg, str(tmp_path), progress=False)
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Compiling jit(train_step)")]
  assert len(compiles) == len(used) <= len(BUCKETS)
  lengths = sorted(int(re.search(r"bool\[4,(\d+)\]", m).group(1)) for m in compiles)
  assert lengths == sorted(used)
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
