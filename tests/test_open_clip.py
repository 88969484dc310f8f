"""The open_clip path of the CLIP converter against open_clip's own PyTorch code (Paella v3's
CLIP-H), with random weights, and Paella v3's image preprocessing against PyTorch's resize.

open_clip_torch is installed without its dependencies: torchvision is needed only by its
image transforms, so it is stubbed here when missing.
"""

import enum
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
import torch

from configs import clip_vit_h14
from paella_jax.convert.clip import (clip_from_pretrained, open_clip_config, open_clip_to_hf,
                                     params_from_hf_state_dict)
from paella_jax.encoders.clip import preprocess_v3
from paella_jax.models.clip import (CLIP_MEAN, CLIP_STD, ClipConfig, TextConfig, VisionConfig,
                                    init_params)
from paella_jax.tokenizer import ClipTokenizer

TOL = 1e-4
PROMPTS = ["a photo of a cat", "", "an oil painting of a lighthouse at dusk, dramatic sky",
           "long prompt " * 60]


def _stub_torchvision():
  """Modules open_clip imports from torchvision at import time, as empty stand-ins."""
  names = ("Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor", "Resize",
           "CenterCrop", "ColorJitter", "Grayscale")
  modules = {name: types.ModuleType(name) for name in (
      "torchvision", "torchvision.transforms", "torchvision.transforms.functional",
      "torchvision.ops", "torchvision.ops.misc")}
  for name in names:
    setattr(modules["torchvision.transforms"], name, type(name, (), {}))
  modules["torchvision.transforms"].InterpolationMode = enum.Enum(
      "InterpolationMode", "NEAREST BILINEAR BICUBIC")  # read by signatures at import
  modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
  modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
  modules["torchvision"].transforms = modules["torchvision.transforms"]
  modules["torchvision"].ops = modules["torchvision.ops"]
  modules["torchvision.ops"].misc = modules["torchvision.ops.misc"]
  return modules


@pytest.fixture(scope="module")
def open_clip():
  if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip_torch not installed (pip install --no-deps open_clip_torch ftfy)")
  import transformers  # noqa: F401  (it looks for torchvision once, at import: not the stubs)
  stubs = {} if importlib.util.find_spec("torchvision") else _stub_torchvision()
  saved = {name: sys.modules.get(name) for name in stubs}
  sys.modules.update(stubs)
  try:  # the stubs are seen only while open_clip imports
    import open_clip
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  return open_clip


# ViT-H-14's layout (open_clip's model_configs/ViT-H-14.json: GELU, 224 px, patch 14, width
# 1280 in heads of 80, 32 layers; text width 1024, 16 heads, 24 layers; embeddings of 1024),
# shrunk: the same module tree with small widths.
TINY_VISION = dict(image_size=32, layers=2, width=64, head_width=16, patch_size=8, mlp_ratio=4.0)
TINY_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
TINY = ClipConfig(
    text=TextConfig(width=32, heads=4, layers=2, mlp_dim=128, act="gelu", pool="argmax"),
    vision=VisionConfig(image_size=32, patch_size=8, width=64, heads=4, layers=2, mlp_dim=256,
                        act="gelu"),
    projection_dim=16)


@pytest.fixture(scope="module")
def tiny_open_clip(open_clip):
  torch.manual_seed(0)
  model = open_clip.model.CLIP(embed_dim=16, vision_cfg=TINY_VISION, text_cfg=TINY_TEXT).eval()
  with torch.no_grad():  # non-trivial biases and norms
    for _, p in model.named_parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def test_open_clip_model_configs(open_clip):
  """Our open_clip architecture table agrees with the configs open_clip ships."""
  for arch in ("ViT-H-14", "ViT-g-14", "ViT-B-32"):
    cfg = open_clip.get_model_config(arch)
    ours = open_clip_config(arch)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert ours.projection_dim == cfg["embed_dim"]
    assert (ours.vision.image_size, ours.vision.patch_size, ours.vision.width,
            ours.vision.layers) == (v["image_size"], v["patch_size"], v["width"], v["layers"])
    assert ours.vision.heads == v["width"] // v.get("head_width", 64)
    assert ours.vision.mlp_dim == int(v["width"] * v.get("mlp_ratio", 4.0))
    assert (ours.text.width, ours.text.heads, ours.text.layers, ours.text.context_length,
            ours.text.vocab_size) == (t["width"], t["heads"], t["layers"], t["context_length"],
                                      t["vocab_size"])
  assert ClipConfig.from_dict(clip_vit_h14.get_config().model.to_dict()) == open_clip_config(
      "ViT-H-14")


def test_tokenizer_matches_open_clip(open_clip):
  expected = open_clip.get_tokenizer("ViT-H-14")(PROMPTS).numpy()
  np.testing.assert_array_equal(ClipTokenizer(pad_token="!")(PROMPTS), expected)


@pytest.mark.parametrize("wrap", ["plain", "state_dict+module"])
def test_parity_with_open_clip(tmp_path, open_clip, tiny_open_clip, wrap):
  sd = tiny_open_clip.state_dict()
  if wrap != "plain":  # how open_clip's training script saves
    sd = {"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}
  torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
  model, params, tokenizer = clip_from_pretrained(tmp_path / "open_clip_pytorch_model.bin",
                                                  arch=TINY)
  ids = tokenizer(PROMPTS)
  pixels = np.random.RandomState(0).randn(3, 32, 32, 3).astype(np.float32)
  with torch.no_grad():
    text = tiny_open_clip.encode_text(torch.tensor(ids, dtype=torch.long)).numpy()
    image = tiny_open_clip.encode_image(torch.tensor(pixels.transpose(0, 3, 1, 2))).numpy()
  apply = jax.jit(model.apply, static_argnames="method")
  np.testing.assert_allclose(apply({"params": params}, ids, method="encode_text"), text,
                             atol=TOL, rtol=0)
  np.testing.assert_allclose(apply({"params": params}, pixels, method="encode_image"), image,
                             atol=TOL, rtol=0)


def test_vit_h14_checkpoint_layout(open_clip):
  """Every tensor of open_clip's ViT-H-14 (built on the meta device: names and shapes only)
  maps onto our ViT-H-14 parameters with the right shape."""
  with torch.device("meta"):
    model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14"))
  sd = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}
  config = open_clip_config("ViT-H-14")
  params = params_from_hf_state_dict(open_clip_to_hf(sd), config, "open_clip ViT-H-14")
  expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(lambda p, e: np.testing.assert_equal(p.shape, e.shape), params, expected)
  n = sum(x.size for x in jax.tree.leaves(expected))
  assert n == sum(v.size for k, v in sd.items() if k not in ("logit_scale",))
  assert 986e6 < n < 987e6  # ViT-H-14: 632M vision + 354M text


def _torch_resize(images, size, antialias):
  """torchvision's Resize(size, bicubic) on float tensors: the shorter side to `size`."""
  _, h, w, _ = images.shape
  long = int(size * max(h, w) / min(h, w))
  shape = (size, long) if h <= w else (long, size)
  out = torch.nn.functional.interpolate(torch.tensor(images).permute(0, 3, 1, 2), size=shape,
                                        mode="bicubic", align_corners=False, antialias=antialias)
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("shape", [(256, 256), (200, 300), (300, 180), (100, 100)])
def test_preprocess_v3_matches_torch_resize(shape, antialias):
  images = np.random.RandomState(0).rand(2, *shape, 3).astype(np.float32)
  out = np.asarray(preprocess_v3(images, 224, antialias=antialias))
  assert out.shape == (2, 224, 224, 3)
  resized = _torch_resize(images, 224, antialias)
  top, left = (resized.shape[1] - 224) // 2, (resized.shape[2] - 224) // 2
  expected = resized[:, top:top + 224, left:left + 224]
  pixels = out * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
  np.testing.assert_allclose(pixels, expected, atol=TOL, rtol=0)
  if shape == (256, 256):  # Paella v3's inputs: no crop, and the two filters differ
    np.testing.assert_allclose(
        np.asarray(preprocess_v3((images * 255).round().astype(np.uint8), 224, antialias)),
        np.asarray(preprocess_v3((images * 255).round() / 255, 224, antialias)), atol=1e-5)
    other = np.asarray(preprocess_v3(images, 224, antialias=not antialias))
    assert np.abs(other - out).max() > 1e-2


def test_preprocess_v3_bad_input():
  with pytest.raises(ValueError, match="NHWC"):
    preprocess_v3(np.zeros((2, 3, 256, 256), np.float32))
