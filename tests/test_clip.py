"""Flax CLIP against transformers' PyTorch CLIPModel, on tiny random models built here.

The converters are checked on every format they read: Hugging Face directories (single and
sharded safetensors, pytorch_model.bin, CLIPTextModelWithProjection) and open_clip state_dicts,
made from the same weights with open_clip's names by a mapping written here from open_clip's
module layout.
"""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from paella_jax.commands import convert as convert_cli
from paella_jax.convert.clip import _config_from_hf, clip_from_pretrained, open_clip_config
from paella_jax.encoders.clip import ClipEncoder, load_clip, random_clip, save_clip
from paella_jax.convert.torch_io import CheckpointMismatchError
from paella_jax.models.clip import CLIP, CLIP_MEAN, CLIP_STD, ClipConfig, preprocess_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
PROMPTS = ["a photo of a cat", "", "an oil painting of a lighthouse at dusk, dramatic sky",
           "long prompt " * 60]
IMAGE_SIZE = 32


def tiny_hf_config(act="gelu", eos_token_id=49407):
  text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=77, hidden_act=act,
              eos_token_id=eos_token_id)
  vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=8, hidden_act=act)
  return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def tiny_hf_model(act="gelu", eos_token_id=49407, seed=0):
  torch.manual_seed(seed)
  model = transformers.CLIPModel(tiny_hf_config(act, eos_token_id)).eval()
  with torch.no_grad():  # non-trivial layer norms, so that a swapped scale/bias would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def pixels(n=3, seed=0):
  return np.random.RandomState(seed).randn(n, IMAGE_SIZE, IMAGE_SIZE, 3).astype(np.float32)


def hf_outputs(model, ids, images):
  with torch.no_grad():
    text = model.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long))
    image = model.get_image_features(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  return {"encode_text": text.pooler_output.numpy(),
          "text_hidden_states": text.last_hidden_state.numpy(),
          "encode_image": image.pooler_output.numpy(),
          "image_hidden_states": image.last_hidden_state.numpy()}


def assert_matches(model, params, ids, images, reference):
  for method, expected in reference.items():
    x = ids if "text" in method else images
    out = np.asarray(model.apply({"params": params}, x, method=method))
    assert out.dtype == np.float32 and out.shape == expected.shape, method
    np.testing.assert_allclose(out, expected, atol=TOL, rtol=0, err_msg=method)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny gelu CLIPModel saved as a Hugging Face directory, and the model itself."""
  model = tiny_hf_model()
  directory = tmp_path_factory.mktemp("hf_clip")
  model.save_pretrained(directory)
  return str(directory), model


@pytest.mark.parametrize("act, eos_token_id, pad", [
    ("gelu", 49407, "<|endoftext|>"),  # new eos convention, Hugging Face padding
    ("quick_gelu", 2, "!"),  # old configs pool at argmax(ids); open_clip padding
    ("quick_gelu", 49407, "!"),
])
def test_parity_with_transformers(tmp_path, act, eos_token_id, pad):
  hf = tiny_hf_model(act, eos_token_id)
  hf.save_pretrained(tmp_path)
  model, params, tokenizer = clip_from_pretrained(tmp_path)
  assert model.config.text.pool == ("argmax" if eos_token_id == 2 else "eos")
  assert model.config.text.act == act
  ids = type(tokenizer)(pad_token=pad)(PROMPTS)
  assert (ids[-1] == tokenizer.eos_token_id).sum() == 1 and ids[-1, -1] == tokenizer.eos_token_id
  assert_matches(model, params, ids, pixels(), hf_outputs(hf, ids, pixels()))


def test_sharded_safetensors_and_bin(tmp_path, hf_dir):
  directory, hf = hf_dir
  reference_model, reference_params, tokenizer = clip_from_pretrained(directory)
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
  assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
  hf.config.to_json_file(str(bin_dir / "config.json"))
  for source in (tmp_path / "sharded", bin_dir):
    model, params, _ = clip_from_pretrained(source)
    assert model.config == reference_model.config
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)


def test_text_model_with_projection(tmp_path, hf_dir):
  _, hf = hf_dir
  text_config = transformers.CLIPTextConfig.from_dict(
      {**hf.config.text_config.to_dict(), "projection_dim": hf.config.projection_dim})
  text_hf = transformers.CLIPTextModelWithProjection(text_config).eval()
  text_hf.text_model.load_state_dict(hf.text_model.state_dict())
  text_hf.text_projection.load_state_dict(hf.text_projection.state_dict())
  text_hf.save_pretrained(tmp_path)
  model, params, tokenizer = clip_from_pretrained(tmp_path)
  assert model.config.vision is None
  ids = tokenizer(PROMPTS)
  reference = hf_outputs(hf, ids, pixels())
  assert_matches(model, params, ids, None, {k: v for k, v in reference.items() if "text" in k})


# open_clip's module layout, from its source: CLIP.{token_embedding, positional_embedding,
# transformer.resblocks.i.{ln_1, attn (nn.MultiheadAttention: fused in_proj_*), ln_2,
# mlp.{c_fc, c_proj}}, ln_final, text_projection (in, out)} and VisionTransformer under
# `visual.` as {conv1, class_embedding, positional_embedding, ln_pre, transformer, ln_post,
# proj (in, out)}.
def to_open_clip(hf_state_dict):
  sd = {k: v.detach().clone() for k, v in hf_state_dict.items()}
  out = {"logit_scale": sd.pop("logit_scale"),
         "text_projection": sd.pop("text_projection.weight").T.contiguous(),
         "visual.proj": sd.pop("visual_projection.weight").T.contiguous()}
  top = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
         "text_model.embeddings.position_embedding.weight": "positional_embedding",
         "text_model.final_layer_norm.weight": "ln_final.weight",
         "text_model.final_layer_norm.bias": "ln_final.bias",
         "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
         "vision_model.embeddings.class_embedding": "visual.class_embedding",
         "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
         "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
         "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
         "vision_model.post_layernorm.weight": "visual.ln_post.weight",
         "vision_model.post_layernorm.bias": "visual.ln_post.bias"}
  for hf_key, oc_key in top.items():
    out[oc_key] = sd.pop(hf_key)
  towers = {"text_model.encoder.layers.": "transformer.resblocks.",
            "vision_model.encoder.layers.": "visual.transformer.resblocks."}
  block = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
           "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
  for hf_prefix, oc_prefix in towers.items():
    layers = sorted({int(k[len(hf_prefix):].split(".")[0]) for k in sd if k.startswith(hf_prefix)})
    for i in layers:
      p = f"{hf_prefix}{i}."
      for kind in ("weight", "bias"):
        out[f"{oc_prefix}{i}.attn.in_proj_{kind}"] = torch.cat(
            [sd.pop(f"{p}self_attn.{n}_proj.{kind}") for n in "qkv"])
        for hf_name, oc_name in block.items():
          out[f"{oc_prefix}{i}.{oc_name}.{kind}"] = sd.pop(f"{p}{hf_name}.{kind}")
  assert not sd, f"unmapped: {sorted(sd)}"
  return out


@pytest.mark.parametrize("wrap", ["plain", "state_dict+module"])
def test_open_clip_checkpoint(tmp_path, hf_dir, wrap):
  directory, hf = hf_dir
  reference_model, _, _ = clip_from_pretrained(directory)
  sd = to_open_clip(hf.state_dict())
  if wrap != "plain":  # how open_clip's training script saves
    sd = {"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}
  path = tmp_path / "open_clip_pytorch_model.bin"
  torch.save(sd, path)
  config = reference_model.config
  arch = dataclasses.replace(config, text=dataclasses.replace(config.text, pool="argmax"))
  model, params, tokenizer = clip_from_pretrained(path, arch=arch)
  assert tokenizer.pad_token_id == 0  # open_clip pads with zeros
  ids = tokenizer(PROMPTS)
  assert_matches(model, params, ids, pixels(), hf_outputs(hf, ids, pixels()))
  text_model, text_params, _ = clip_from_pretrained(path, arch=arch, text_only=True)
  assert set(text_params) == {"text_model", "text_projection"}
  np.testing.assert_array_equal(
      text_model.apply({"params": text_params}, ids, method="encode_text"),
      model.apply({"params": params}, ids, method="encode_text"))


def test_open_clip_archs_match_transformers_configs():
  # transformers' default CLIPConfig is OpenAI's ViT-B/32 (quick_gelu, new eos convention).
  hf = _config_from_hf(transformers.CLIPConfig().to_dict())
  oc = open_clip_config("ViT-B-32-quickgelu")
  assert hf.vision == oc.vision and hf.projection_dim == oc.projection_dim
  assert dataclasses.replace(hf.text, pool="argmax") == oc.text
  g14 = open_clip_config("ViT-g-14")
  assert (g14.text.width, g14.text.heads, g14.text.layers, g14.projection_dim) == (1024, 16, 24, 1024)
  assert (g14.vision.heads, g14.vision.mlp_dim, g14.text.act) == (16, 6144, "gelu")


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_paella_v1_text_encoder_config():
  config = ClipConfig.from_dict(load_config("clip_vit_g14").model.to_dict())
  assert config.text == open_clip_config("ViT-g-14").text
  assert config.vision is None and config.projection_dim == 1024


def test_convert_cli_and_reload(tmp_path, hf_dir):
  directory, hf = hf_dir
  out = tmp_path / "converted"
  convert_cli.main(["clip", directory, str(out), "--text-only"])
  with open(out / "model.json") as f:
    assert json.load(f)["kind"] == "clip"
  model, params, tokenizer = clip_from_pretrained(out)
  assert model.config.vision is None and tokenizer.pad_token == "<|endoftext|>"
  ids = tokenizer(PROMPTS)
  reference = hf_outputs(hf, ids, pixels())
  assert_matches(model, params, ids, None, {k: v for k, v in reference.items() if "text" in k})
  with pytest.raises(FileExistsError):
    convert_cli.main(["clip", directory, str(out)])


def test_bf16_compute_error(hf_dir):
  directory, hf = hf_dir
  model32, params, tokenizer = clip_from_pretrained(directory)
  model16, params16, _ = clip_from_pretrained(directory, dtype=jnp.bfloat16,
                                              param_dtype=jnp.bfloat16)
  ids = tokenizer(PROMPTS)
  for method, x in (("encode_text", ids), ("encode_image", pixels())):
    ref = np.asarray(model32.apply({"params": params}, x, method=method))
    out = model16.apply({"params": params16}, x, method=method)
    assert out.dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(out) - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert rel.max() < 3e-2, (method, rel)


@pytest.fixture(scope="module")
def tiny_clip():
  """configs/clip_tiny.py's random CLIP: (config, module, params, tokenizer)."""
  config = load_config("clip_tiny")
  return (config, *random_clip(config.model, seed=config.seed))


def test_random_tiny_clip_and_batched_encoder(tiny_clip):
  config, model, params, tokenizer = tiny_clip
  assert config.random_weights
  _, params_again, _ = random_clip(config.model, seed=config.seed)
  jax.tree.map(np.testing.assert_array_equal, params, params_again)
  encoder = ClipEncoder(model, params, tokenizer, batch_size=2)
  apply = jax.jit(model.apply, static_argnames="method")
  prompts = [f"prompt number {i}" for i in range(5)]
  expected = apply({"params": params}, tokenizer(prompts), method="encode_text")
  np.testing.assert_allclose(encoder.encode_text(prompts), expected, atol=1e-5)
  images = pixels(3)
  expected = apply({"params": params}, images, method="encode_image")
  np.testing.assert_allclose(encoder.encode_images(images), expected, atol=1e-5)
  assert encoder.encode_text([]).shape == (0, config.model.projection_dim)
  np.testing.assert_array_equal(encoder.null(2), np.zeros((2, config.model.projection_dim)))


def test_save_load_roundtrip(tmp_path, tiny_clip):
  _, model, params, tokenizer = tiny_clip
  save_clip(tmp_path / "ckpt", model, params, tokenizer)
  model2, params2, tokenizer2 = load_clip(tmp_path / "ckpt")
  assert model2.config == model.config and tokenizer2.to_config() == tokenizer.to_config()
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_preprocess_images():
  from PIL import Image
  rng = np.random.RandomState(0)
  image = (rng.rand(48, 64, 3) * 255).astype(np.uint8)
  out = np.asarray(preprocess_images(image[None], 32))
  assert out.shape == (1, 32, 32, 3)
  # CLIP's own preprocessing: PIL bicubic resize of the shorter side, center crop, normalise.
  resized = np.asarray(Image.fromarray(image).resize((43, 32), Image.BICUBIC), np.float32) / 255
  left = (43 - 32) // 2
  expected = (resized[:, left:left + 32] - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
  assert np.abs(out[0] - expected).mean() < 0.02
  np.testing.assert_allclose(preprocess_images(image[None] / 255.0, 32), out, atol=1e-5)
  with pytest.raises(ValueError, match="NHWC"):
    preprocess_images(image, 32)


# ----------------------------------------------------------------------------- bad input

def test_not_a_clip_checkpoint(tmp_path):
  path = tmp_path / "vqgan.pt"
  torch.save({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, path)
  with pytest.raises(CheckpointMismatchError, match="not a CLIP checkpoint"):
    clip_from_pretrained(path, arch="ViT-B-32")
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    clip_from_pretrained(tmp_path / "empty_dir")
  with pytest.raises(FileNotFoundError):
    clip_from_pretrained(tmp_path / "missing.bin", arch="ViT-B-32")
  path = tmp_path / "bert" / "config.json"
  path.parent.mkdir()
  path.write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(CheckpointMismatchError, match="not a CLIP model"):
    clip_from_pretrained(path.parent)


def test_wrong_size_and_arch(tmp_path, hf_dir):
  _, hf = hf_dir
  path = tmp_path / "open_clip.bin"
  torch.save(to_open_clip(hf.state_dict()), path)
  with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
    clip_from_pretrained(path, arch="ViT-B-32")
  with pytest.raises(ValueError, match="arch"):
    clip_from_pretrained(path)
  with pytest.raises(ValueError, match="unknown open_clip architecture"):
    clip_from_pretrained(path, arch="ViT-Q-99")
  sd = hf.state_dict()
  sd.pop("text_model.final_layer_norm.bias")
  directory = tmp_path / "truncated_hf"
  directory.mkdir()
  torch.save(sd, directory / "pytorch_model.bin")
  hf.config.to_json_file(str(directory / "config.json"))
  with pytest.raises(CheckpointMismatchError, match="final_layer_norm.bias"):
    clip_from_pretrained(directory)


def test_bad_inputs(tiny_clip):
  config, model, params, tokenizer = tiny_clip
  with pytest.raises(TypeError, match="strings"):
    tokenizer([1, 2])
  for bad in (np.zeros((2, 16, 16, 3)), np.zeros((2, 3, 32, 32)), np.zeros((32, 32, 3))):
    with pytest.raises(ValueError, match="images must be"):
      model.apply({"params": params}, bad, method="encode_image")
  with pytest.raises(ValueError, match="context length"):
    model.apply({"params": params}, np.zeros((1, 78), np.int32), method="encode_text")
  with pytest.raises(ValueError, match="integer"):
    model.apply({"params": params}, np.zeros((1, 77), np.float32), method="encode_text")
  text_config = dataclasses.replace(model.config, vision=None)
  text_params = {k: params[k] for k in ("text_model", "text_projection")}
  with pytest.raises(ValueError, match="no vision tower"):
    CLIP(text_config).apply({"params": text_params}, pixels(), method="encode_image")


@pytest.mark.slow
def test_parity_full_size_vit_b32(tmp_path):
  """transformers' default CLIPConfig (OpenAI ViT-B/32: 77 tokens, 224 px), random weights."""
  torch.manual_seed(0)
  hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
  hf.save_pretrained(tmp_path)
  model, params, tokenizer = clip_from_pretrained(tmp_path)
  ids = tokenizer(PROMPTS)
  images = np.random.RandomState(0).randn(2, 224, 224, 3).astype(np.float32)
  with torch.no_grad():
    text = hf.get_text_features(input_ids=torch.tensor(ids, dtype=torch.long)).pooler_output
    image = hf.get_image_features(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  apply = jax.jit(model.apply, static_argnames="method")
  np.testing.assert_allclose(apply({"params": params}, ids, method="encode_text"), text.numpy(),
                             atol=TOL, rtol=0)
  np.testing.assert_allclose(apply({"params": params}, images, method="encode_image"),
                             image.pooler_output.numpy(), atol=TOL, rtol=0)
