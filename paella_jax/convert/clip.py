"""CLIP weights from Hugging Face `CLIPModel` directories and open_clip checkpoints.

    model, params, tokenizer = clip_from_pretrained("CLIP-ViT-g-14-laion2B-s12B-b42K/")
    emb = model.apply({"params": params}, tokenizer(["a cat"]), method="encode_text")  # (1, 1024)

Sources accepted by `clip_from_pretrained`:
  - a Hugging Face `CLIPModel` (or `CLIPTextModelWithProjection`) directory: config.json plus
    model.safetensors, sharded model-0000x-of-0000y.safetensors with their index, or
    pytorch_model.bin (sharded or not);
  - an open_clip checkpoint file (.bin/.pt/.safetensors; state_dict names `transformer.*`,
    `token_embedding.weight`, `visual.*`, ...) with its architecture named by `arch`;
  - a directory written by `save_clip` (`python -m paella_jax.convert clip SRC OUT_DIR`).

Command line:
    python -m paella_jax.convert clip SRC OUT_DIR [--arch ViT-g-14] [--text-only]
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paella_jax import checkpoint
from paella_jax.convert.torch_io import (CheckpointMismatchError, check_state_dict,
                                         load_torch_file, to_numpy_state_dict, unwrap_state_dict)
from paella_jax.encoders.clip import load_clip, save_clip
from paella_jax.models.clip import CLIP, ClipConfig, TextConfig, VisionConfig, init_params
from paella_jax.tokenizer import END_OF_TEXT, OPEN_CLIP_PAD, ClipTokenizer


# open_clip architectures: (embed_dim, text (width, heads, layers),
# vision (patch, width, head_width, layers, mlp_ratio)); all 224 px, 77 tokens, 49408 vocab.
OPEN_CLIP_ARCHS = {
    "ViT-B-32": (512, (512, 8, 12), (32, 768, 64, 12, 4.0)),
    "ViT-B-16": (512, (512, 8, 12), (16, 768, 64, 12, 4.0)),
    "ViT-L-14": (768, (768, 12, 12), (14, 1024, 64, 24, 4.0)),
    "ViT-H-14": (1024, (1024, 16, 24), (14, 1280, 80, 32, 4.0)),
    "ViT-g-14": (1024, (1024, 16, 24), (14, 1408, 88, 40, 4.3637)),
    "ViT-bigG-14": (1280, (1280, 20, 32), (14, 1664, 104, 48, 4.9231)),
}
QUICKGELU_SUFFIX = "-quickgelu"  # open_clip's names for OpenAI-trained weights

# Keys of either format that carry nothing the encoders use.
IGNORED_KEYS = ("logit_scale", "logit_bias", "attn_mask", "text_model.embeddings.position_ids",
                "vision_model.embeddings.position_ids")
HF_VISION_PREFIXES = ("vision_model.", "visual_projection.")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ----------------------------------------------------------------------------- architectures

def open_clip_config(arch: str) -> ClipConfig:
  """The ClipConfig of an open_clip architecture name, e.g. "ViT-g-14" or "ViT-B-32-quickgelu"."""
  name = arch[:-len(QUICKGELU_SUFFIX)] if arch.endswith(QUICKGELU_SUFFIX) else arch
  if name not in OPEN_CLIP_ARCHS:
    known = ", ".join(sorted(OPEN_CLIP_ARCHS))
    raise ValueError(f"unknown open_clip architecture {arch!r}; known: {known} "
                     f"(each also with {QUICKGELU_SUFFIX!r})")
  embed_dim, (t_width, t_heads, t_layers), (patch, v_width, head_width, v_layers, ratio) = (
      OPEN_CLIP_ARCHS[name])
  act = "quick_gelu" if arch.endswith(QUICKGELU_SUFFIX) else "gelu"
  text = TextConfig(width=t_width, heads=t_heads, layers=t_layers, mlp_dim=4 * t_width, act=act,
                    pool="argmax")
  vision = VisionConfig(image_size=224, patch_size=patch, width=v_width,
                        heads=v_width // head_width, layers=v_layers,
                        mlp_dim=int(v_width * ratio), act=act)
  return ClipConfig(text=text, vision=vision, projection_dim=embed_dim)


def _config_from_hf(d: Mapping[str, Any]) -> ClipConfig:
  """ClipConfig of a Hugging Face config.json (model_type "clip" or "clip_text_model")."""
  import transformers
  model_type = d.get("model_type")
  if model_type == "clip":
    hf = transformers.CLIPConfig.from_dict(dict(d))
    t, v, projection_dim = hf.text_config, hf.vision_config, hf.projection_dim
  elif model_type == "clip_text_model":
    t, v = transformers.CLIPTextConfig.from_dict(dict(d)), None
    projection_dim = t.projection_dim
  else:
    raise CheckpointMismatchError(f"config.json describes a {model_type!r} model, not a CLIP model "
                                  "(model_type 'clip' or 'clip_text_model')")
  eos = t.eos_token_id
  # Configs written before transformers fixed CLIP's eos_token_id say 2 and pool at argmax(ids).
  text = TextConfig(vocab_size=t.vocab_size, width=t.hidden_size, heads=t.num_attention_heads,
                    layers=t.num_hidden_layers, mlp_dim=t.intermediate_size,
                    context_length=t.max_position_embeddings, act=t.hidden_act,
                    ln_eps=t.layer_norm_eps, pool="argmax" if eos == 2 else "eos",
                    eos_token_id=49407 if eos == 2 else eos)
  vision = None if v is None else VisionConfig(
      image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size,
      heads=v.num_attention_heads, layers=v.num_hidden_layers, mlp_dim=v.intermediate_size,
      act=v.hidden_act, ln_eps=v.layer_norm_eps)
  return ClipConfig(text=text, vision=vision, projection_dim=projection_dim)


# ----------------------------------------------------------------------------- name mapping

_HF_RENAMES = {"token_embedding": "embeddings.token_embedding",
               "patch_embedding": "embeddings.patch_embedding",
               "pre_layernorm": "pre_layrnorm", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_HF_LEAVES = {"scale": "weight", "kernel": "weight", "embedding": "weight", "bias": "bias"}


def _hf_key(path: tuple[str, ...]) -> str:
  """Hugging Face state_dict key of a Flax parameter path."""
  *modules, leaf = path
  names = [("layers." + m[len("layers_"):]) if m.startswith("layers_") else _HF_RENAMES.get(m, m)
           for m in modules]
  if leaf == "class_embedding":
    return ".".join(names + ["embeddings", leaf])
  if leaf == "position_embedding":
    return ".".join(names + ["embeddings", leaf, "weight"])
  return ".".join(names + [_HF_LEAVES[leaf]])


def _to_flax(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
  """Torch layout -> Flax layout: Linear (out, in) -> (in, out); Conv OIHW -> HWIO."""
  if path[-1] == "kernel":
    return x.T if x.ndim == 2 else x.transpose(2, 3, 1, 0)
  return x


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] == "kernel":
    return shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


_OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
                    "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj",
                    "attn.in_proj_weight": "self_attn.in_proj.weight",
                    "attn.in_proj_bias": "self_attn.in_proj.bias"}
_OPEN_CLIP_TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
                     "transformer.resblocks.": "text_model.encoder.layers."}
_OPEN_CLIP_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                  "positional_embedding": "text_model.embeddings.position_embedding.weight",
                  "ln_final": "text_model.final_layer_norm",
                  "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                  "visual.class_embedding": "vision_model.embeddings.class_embedding",
                  "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
                  "visual.ln_pre": "vision_model.pre_layrnorm",
                  "visual.ln_post": "vision_model.post_layernorm"}
_OPEN_CLIP_PROJECTIONS = {"text_projection": "text_projection.weight",
                          "visual.proj": "visual_projection.weight"}


def _replace_prefix(key: str, renames: Mapping[str, str]) -> str:
  """`key` with its first matching component prefix in `renames` replaced."""
  for src, dst in renames.items():
    if key == src or key.startswith(src + "."):
      return dst + key[len(src):]
  return key


def _open_clip_name(key: str) -> str:
  """Hugging Face name of an open_clip key (fused attention as `self_attn.in_proj.*`)."""
  for tower, hf_tower in _OPEN_CLIP_TOWERS.items():
    if key.startswith(tower):
      index, rest = key[len(tower):].split(".", 1)
      return f"{hf_tower}{index}.{_replace_prefix(rest, _OPEN_CLIP_BLOCK)}"
  return _replace_prefix(key, _OPEN_CLIP_TOP)


def open_clip_to_hf(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames an open_clip CLIP state_dict to Hugging Face `CLIPModel` names and layouts.

  Fused attention input projections (3W, ...) are split into q/k/v; projection matrices
  (in, out) are transposed to Linear weights (out, in). Unknown keys are kept as they are.
  """
  out = {}
  for key, value in state_dict.items():
    if key in _OPEN_CLIP_PROJECTIONS:
      out[_OPEN_CLIP_PROJECTIONS[key]] = value.T
      continue
    name = _open_clip_name(key)
    if ".self_attn.in_proj." in name:
      for part_name, part in zip("qkv", np.split(value, 3, axis=0)):
        out[name.replace(".in_proj.", f".{part_name}_proj.")] = part
    else:
      out[name] = value
  return out


def _detect_format(state_dict: Mapping[str, Any]) -> str:
  """"hf" or "open_clip"; CheckpointMismatchError for anything that is not a CLIP state_dict."""
  if any(k.startswith("text_model.") for k in state_dict):
    return "hf"
  if "token_embedding.weight" in state_dict or any(k.startswith("transformer.resblocks.")
                                                   for k in state_dict):
    return "open_clip"
  shown = ", ".join(sorted(state_dict)[:8]) or "no keys"
  raise CheckpointMismatchError(
      "not a CLIP checkpoint: expected Hugging Face CLIPModel names (text_model.*) or open_clip "
      f"names (token_embedding.weight, transformer.resblocks.*); found {shown}")


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: ClipConfig,
                              what: str) -> dict[str, Any]:
  """Flax parameters of `CLIP(config)` from a state_dict in Hugging Face naming (numpy).

  Raises CheckpointMismatchError naming missing, unexpected and mis-shaped keys.
  """
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  flat_shapes = traverse_util.flatten_dict(shapes)
  expected = {_hf_key(p): _torch_shape(p, s.shape) for p, s in flat_shapes.items()}
  state_dict = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
  if config.vision is None:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HF_VISION_PREFIXES)}
  check_state_dict(state_dict, expected, what)
  flat = {p: _to_flax(p, np.asarray(state_dict[_hf_key(p)], np.float32)) for p in flat_shapes}
  return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------- loading

def _hf_weight_files(directory: str) -> list[str]:
  for name in HF_WEIGHT_FILES:
    index = os.path.join(directory, name + ".index.json")
    if os.path.isfile(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      return [os.path.join(directory, s) for s in shards]
    if os.path.isfile(os.path.join(directory, name)):
      return [os.path.join(directory, name)]
  raise FileNotFoundError(f"{directory} has a config.json but no weights ({', '.join(HF_WEIGHT_FILES)}"
                          " or their sharded .index.json)")


def _hf_pad_token(directory: str) -> str:
  """The pad token of a Hugging Face directory's tokenizer files, else Hugging Face's default."""
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path) as f:
        pad = json.load(f).get("pad_token")
      if pad is not None:
        return pad["content"] if isinstance(pad, Mapping) else pad
  return END_OF_TEXT


def _load_hf_dir(directory: str, text_only: bool):
  with open(os.path.join(directory, "config.json")) as f:
    config = _config_from_hf(json.load(f))
  if text_only:
    config = dataclasses.replace(config, vision=None)
  state_dict = {}
  for path in _hf_weight_files(directory):
    shard = unwrap_state_dict(load_torch_file(path))
    if text_only:  # drop the vision tower shard by shard, before it is converted to float32
      shard = {k: v for k, v in shard.items() if not k.startswith(HF_VISION_PREFIXES)}
    state_dict.update(to_numpy_state_dict(shard))
  _detect_format(state_dict)
  what = f"Hugging Face CLIP {directory}"
  return config, params_from_hf_state_dict(state_dict, config, what), _hf_pad_token(directory)


def _load_open_clip(path: str, arch: str | ClipConfig | None, text_only: bool):
  state_dict = unwrap_state_dict(load_torch_file(path))
  kind = _detect_format(state_dict)
  if kind != "open_clip":
    raise CheckpointMismatchError(f"{path} holds Hugging Face CLIPModel names; pass the directory "
                                  "with its config.json instead of the weights file")
  if arch is None:
    raise ValueError(f"{path} is an open_clip checkpoint: name its architecture with arch= "
                     f"(--arch), one of {', '.join(OPEN_CLIP_ARCHS)}")
  config = arch if isinstance(arch, ClipConfig) else open_clip_config(arch)
  if text_only:
    config = dataclasses.replace(config, vision=None)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
  state_dict = open_clip_to_hf(to_numpy_state_dict(state_dict))
  what = f"open_clip {arch} from {path} (keys in Hugging Face naming)"
  return config, params_from_hf_state_dict(state_dict, config, what), OPEN_CLIP_PAD


def clip_from_pretrained(path: str | os.PathLike, arch: str | ClipConfig | None = None, *,
                         text_only: bool = False, dtype: Any = jnp.float32,
                         param_dtype: Any = jnp.float32):
  """Loads CLIP weights: returns (module, params, tokenizer).

  Args:
    path: a Hugging Face CLIPModel directory, an open_clip checkpoint file, or a directory
      written by `save_clip`.
    arch: open_clip architecture name (see OPEN_CLIP_ARCHS, "-quickgelu" for OpenAI weights)
      or a ClipConfig; required for open_clip files, not used otherwise (their config says).
    text_only: skip the vision tower (Paella v1 needs only the text tower).
    dtype: compute dtype of the matrix products (jnp.bfloat16 for speed; outputs stay float32).
    param_dtype: storage dtype of the returned parameters.

  The tokenizer pads like the source: open_clip with id 0, Hugging Face per its tokenizer files.
  """
  path = os.fspath(path)
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, checkpoint.MODEL_FILE)):
    return load_clip(path, text_only=text_only, dtype=dtype, param_dtype=param_dtype)
  if os.path.isdir(path):
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"{path} is neither a Hugging Face model directory (no config.json) "
                              f"nor a paella-jax checkpoint (no {checkpoint.MODEL_FILE})")
    config, params, pad = _load_hf_dir(path, text_only)
  else:
    config, params, pad = _load_open_clip(path, arch, text_only)
  params = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)
  tokenizer = ClipTokenizer(max_length=config.text.context_length, pad_token=pad)
  return CLIP(config, dtype=dtype, param_dtype=param_dtype), params, tokenizer


# ----------------------------------------------------------------------------- command line

def write_checkpoint(*, src: str, out_dir: str, arch: str | None = None, text_only: bool = False,
                     param_dtype: str = "float32", overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  model, params, tokenizer = clip_from_pretrained(src, arch, text_only=text_only,
                                                  param_dtype=jnp.dtype(param_dtype))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  meta = {"source": os.path.abspath(src), "arch": arch, "param_dtype": param_dtype}
  out = save_clip(out_dir, model, params, tokenizer, meta=meta, overwrite=overwrite)
  towers = "text" if model.config.vision is None else "text + vision"
  return (f"wrote CLIP ({towers}, {n_params:,} parameters, embeddings of "
          f"{model.config.projection_dim}) to {out}")
