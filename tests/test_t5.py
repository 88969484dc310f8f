"""Flax T5 encoder against transformers' PyTorch T5EncoderModel, on tiny random models built here.

Every format the converter reads is made with transformers from the same weights: safetensors
and pytorch_model.bin, single and sharded with an index, encoder-only and encoder-decoder.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5.modeling_t5 import T5Attention

from configs import byt5_xl, t5_tiny
from paella_jax.byt5_tokenizer import ByT5Tokenizer
from paella_jax.commands import convert as convert_cli
from paella_jax.convert import t5_encoder_from_pretrained
from paella_jax.convert.torch_io import CheckpointMismatchError
from paella_jax.encoders.byt5 import (ByT5Encoder, load_t5_encoder, random_t5_encoder,
                                      save_t5_encoder)
from paella_jax.models.t5 import T5Config, T5Encoder, init_params, relative_position_buckets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
# Lengths up to 60 bytes: past max_distance (20), so every kind of bucket is used.
PROMPTS = ["a cat", "", "an oil painting of a lighthouse at dusk, dramatic sky, 4k",
           "naïve café 🐱 日本"]


def hf_config(**overrides):
  """T5 v1.1 / ByT5 layout: gated GELU, inner width heads x d_kv = 48 != d_model = 32."""
  fields = dict(vocab_size=384, d_model=32, d_kv=12, d_ff=40, num_layers=2, num_decoder_layers=1,
                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)
  return transformers.T5Config(**{**fields, **overrides})


def random_model(cls=transformers.T5EncoderModel, seed=0, **overrides):
  torch.manual_seed(seed)
  model = cls(hf_config(**overrides)).eval()
  with torch.no_grad():  # non-trivial norms and position biases
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      if "relative_attention_bias" in name:
        p.normal_(0, 1.0)
  return model


def hf_hidden(model, ids, mask=None):
  encoder = model if isinstance(model, transformers.T5EncoderModel) else model.get_encoder()
  with torch.no_grad():
    out = encoder(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=None if mask is None else torch.tensor(mask, dtype=torch.long))
  return out.last_hidden_state.numpy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny ByT5-style T5EncoderModel saved as a Hugging Face directory, and the model."""
  model = random_model()
  directory = tmp_path_factory.mktemp("hf_t5")
  model.save_pretrained(directory)
  return str(directory), model


@pytest.fixture(scope="module")
def converted(hf_dir):
  return t5_encoder_from_pretrained(hf_dir[0])


def test_relative_position_buckets_match_transformers():
  for num_buckets, max_distance in ((32, 128), (8, 20), (16, 32), (64, 256)):
    ours = relative_position_buckets(300, num_buckets, max_distance)
    position = torch.arange(300)
    theirs = T5Attention._relative_position_bucket(position[None, :] - position[:, None], True,
                                                   num_buckets, max_distance).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(ours)) == num_buckets - 1  # distance 0 counts as negative only


@pytest.mark.parametrize("masked", [False, True])
def test_parity_with_transformers(hf_dir, converted, masked):
  _, hf = hf_dir
  model, params, tokenizer = converted
  assert model.config == T5Config.from_dict(hf.config.to_dict())
  assert model.config.num_heads * model.config.d_kv != model.config.d_model
  ids = tokenizer(PROMPTS)
  mask = ids != 0 if masked else None
  assert ids.shape[1] > model.config.relative_attention_max_distance and (ids == 0).any()
  out = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
  assert out.dtype == np.float32 and out.shape == (*ids.shape, 32)
  np.testing.assert_allclose(out, hf_hidden(hf, ids, mask), atol=TOL, rtol=0)


def test_t5_v1_0_layout_bin_file(tmp_path):
  """ReLU feed-forward and heads x d_kv == d_model (T5 v1.0), from pytorch_model.bin; a
  vocabulary other than ByT5's gets no byte tokenizer."""
  hf = random_model(vocab_size=100, d_kv=8, feed_forward_proj="relu")
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  hf.config.to_json_file(str(tmp_path / "config.json"))
  model, params, tokenizer = t5_encoder_from_pretrained(tmp_path)
  assert tokenizer is None and not model.config.gated and model.config.activation == "relu"
  ids = np.random.RandomState(0).randint(0, 100, (2, 37))
  np.testing.assert_allclose(model.apply({"params": params}, ids), hf_hidden(hf, ids),
                             atol=TOL, rtol=0)


def test_encoder_decoder_and_sharded_checkpoints(tmp_path, hf_dir, converted):
  """An encoder-decoder model (as google/byt5-xl is) drops its decoder; sharded safetensors and
  sharded .bin with their index, and the older layout with the tied embedding stored twice,
  give the parameters of the encoder-only directory."""
  _, hf = hf_dir
  _, reference, _ = converted
  full = random_model(transformers.T5ForConditionalGeneration, seed=1)
  full.encoder.load_state_dict(hf.encoder.state_dict())
  full.shared.load_state_dict(hf.shared.state_dict())
  full.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  assert any(k.startswith("decoder.") for k in index["weight_map"])
  # pytorch_model.bin shards and index, every key written out as older checkpoints have them.
  state = {**full.state_dict(), "encoder.embed_tokens.weight": full.shared.weight,
           "decoder.embed_tokens.weight": full.shared.weight, "lm_head.weight": full.lm_head.weight}
  keys = sorted(state)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  weight_map = {}
  for i, part in enumerate(np.array_split(keys, 3)):
    name = f"pytorch_model-{i + 1:05d}-of-00003.bin"
    torch.save({str(k): state[k].clone() for k in part}, bin_dir / name)
    weight_map.update({str(k): name for k in part})
  (bin_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  full.config.to_json_file(str(bin_dir / "config.json"))
  for source in (tmp_path / "sharded", bin_dir):
    model, params, tokenizer = t5_encoder_from_pretrained(source)
    assert model.config.num_layers == 2 and tokenizer is not None
    jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_padded_batch_gives_each_prompt_its_states(converted):
  model, params, tokenizer = converted
  encoder = ByT5Encoder(model, params, tokenizer, batch_size=3, pad_multiple=16)
  hidden, mask = encoder.encode(PROMPTS)
  ids = tokenizer(PROMPTS)
  assert hidden.shape[:2] == mask.shape and mask.shape[1] % 16 == 0 and mask.dtype == bool
  np.testing.assert_array_equal(mask, np.pad(ids != 0, ((0, 0), (0, mask.shape[1] - ids.shape[1]))))
  # The original's call: no mask, padded to the longest prompt only.
  unmasked, _ = ByT5Encoder(model, params, tokenizer, batch_size=len(PROMPTS), pad_multiple=1,
                            masked=False).encode(PROMPTS)
  assert unmasked.shape[1] == ids.shape[1] < hidden.shape[1]
  apply = jax.jit(model.apply)
  for i in (0, 1):  # the short prompts, padded most
    alone = np.asarray(apply({"params": params}, tokenizer([PROMPTS[i]])))[0]
    n = len(alone)
    assert mask[i].sum() == n and n < ids.shape[1]
    np.testing.assert_allclose(hidden[i, :n], alone, atol=1e-5, rtol=0)
    # Without the mask the padding of the batch changes a short prompt's states.
    assert np.abs(unmasked[i, :n] - alone).max() > 1e-3
  null, null_mask = encoder.null(2)
  np.testing.assert_allclose(null[:, :1], np.broadcast_to(hidden[1, :1], (2, 1, 32)), atol=1e-5)
  assert null_mask.shape == (2, 16) and null_mask.sum() == 2


def test_bf16_compute_error(hf_dir, converted):
  model32, params, tokenizer = converted
  model16, params16, _ = t5_encoder_from_pretrained(hf_dir[0], dtype=jnp.bfloat16,
                                                    param_dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
  ids = tokenizer(PROMPTS)
  ref = np.asarray(model32.apply({"params": params}, ids, ids != 0))
  out = model16.apply({"params": params16}, ids, ids != 0)
  assert out.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(out) - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
  assert 1e-4 < rel.max() < 3e-2, rel.max()


def test_convert_cli_and_reload(tmp_path, hf_dir, converted):
  directory, _ = hf_dir
  model, params, tokenizer = converted
  out = tmp_path / "converted"
  convert_cli.main(["t5", directory, str(out), "--max-length", "300"])
  assert json.loads((out / "model.json").read_text())["kind"] == "t5_encoder"
  model2, params2, tokenizer2 = t5_encoder_from_pretrained(out)
  assert model2.config == model.config and tokenizer2.max_length == 300
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  with pytest.raises(FileExistsError):
    convert_cli.main(["t5", directory, str(out)])


def test_tiny_config_save_load_roundtrip(tmp_path):
  config = t5_tiny.get_config()
  model, params, tokenizer = random_t5_encoder(config.model, seed=config.seed)
  save_t5_encoder(tmp_path / "ckpt", model, params, tokenizer)
  model2, params2, tokenizer2 = load_t5_encoder(tmp_path / "ckpt")
  assert model2.config == model.config and tokenizer2.to_config() == tokenizer.to_config()
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_byt5_xl_config():
  config = byt5_xl.get_config()
  model = T5Encoder(T5Config.from_dict(config.model))
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  # 36 blocks of 4 x 2560 x 2048 attention and 3 x 2560 x 6720 feed-forward weights, plus the
  # embedding, the position-bias table and the norms.
  per_block = 4 * 2560 * 2048 + 3 * 2560 * 6720 + 2 * 2560
  assert n == 36 * per_block + 384 * 2560 + 32 * 32 + 2560
  assert 2.61e9 < n < 2.62e9
  assert config.tokenizer.max_length == 768 and ByT5Tokenizer(**config.tokenizer).vocab_size == 384


def test_bad_checkpoints(tmp_path, hf_dir):
  _, hf = hf_dir
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    t5_encoder_from_pretrained(tmp_path / "empty")
  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(CheckpointMismatchError, match="not a T5 encoder"):
    t5_encoder_from_pretrained(bert)
  state = hf.state_dict()
  state.pop("encoder.block.1.layer.1.DenseReluDense.wi_1.weight")
  state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(12, 32)
  broken = tmp_path / "broken"
  broken.mkdir()
  torch.save(state, broken / "pytorch_model.bin")
  hf.config.to_json_file(str(broken / "config.json"))
  with pytest.raises(CheckpointMismatchError, match=r"wi_1(.|\n)*shape mismatches"):
    t5_encoder_from_pretrained(broken)


def test_bad_inputs(converted):
  model, params, _ = converted
  with pytest.raises(ValueError, match="integer"):
    model.apply({"params": params}, np.zeros((1, 5), np.float32))
  with pytest.raises(ValueError, match="attention_mask"):
    model.apply({"params": params}, np.zeros((2, 5), np.int32), np.ones((2, 4), bool))
  with pytest.raises(ValueError, match="feed_forward_proj"):
    T5Config(feed_forward_proj="gated-swish-x")


SHARDED = """
import jax, ml_collections, numpy as np
from configs import t5_tiny
from paella_jax.encoders.byt5 import ByT5Encoder, random_t5_encoder
from paella_jax.sharding import make_mesh
model, params, tokenizer = random_t5_encoder(t5_tiny.get_config().model)
mesh = make_mesh(ml_collections.ConfigDict(dict(shape=(1, 2, 2))))
prompts = ["a cat", "", "a lighthouse at dusk", "x" * 40, "y"]
hidden, mask = ByT5Encoder(model, params, tokenizer, batch_size=4, mesh=mesh).encode(prompts)
ids = tokenizer(prompts, pad_to_multiple_of=64)
expected = model.apply({"params": params}, ids, ids != 0)
assert mask.shape == ids.shape, mask.shape
print("max_abs_error", float(np.abs(hidden - np.asarray(expected)).max()))
try:
  ByT5Encoder(model, params, tokenizer, batch_size=3, mesh=mesh)
except ValueError as e:
  print(e)
"""


@pytest.mark.slow
def test_sharded_over_four_devices():
  """FSDP x tensor parallel (mesh 1 x 2 x 2 over 4 CPU devices) gives the unsharded states."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  error = float(out.stdout.split("max_abs_error")[1].split()[0])
  assert error < 1e-5
  assert "does not split over the 2 batch shards" in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install 'jax[tpu]')")
def test_aot_compile_sharded_over_a_tpu_topology():
  """The tiny encoder's sharded forward compiles for v5e:2x2 with FSDP x tensor parallelism."""
  code = """
import jax
from configs import t5_tiny
from paella_jax.aot import tpu_devices
from paella_jax.encoders.byt5 import compile_forward, random_t5_encoder
from paella_jax.models.t5 import T5Config, T5Encoder
from paella_jax.sharding import make_mesh
import ml_collections
model = T5Encoder(T5Config.from_dict(t5_tiny.get_config().model))
mesh = make_mesh(ml_collections.ConfigDict(dict(shape=(1, 2, 2))), tpu_devices("v5e:2x2"))
m = compile_forward(model, mesh, batch=8, length=64).memory_analysis()
print("OK", m.argument_size_in_bytes, m.temp_size_in_bytes)
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("OK")
