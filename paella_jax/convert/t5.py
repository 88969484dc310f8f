"""T5 / ByT5 encoder weights from Hugging Face directories.

    t5, params, tokenizer = t5_encoder_from_pretrained("byt5-xl/")     # google/byt5-xl
    hidden = t5.apply({"params": params}, tokenizer(["a cat"]))        # (1, 6, 2560)

Sources accepted by `t5_encoder_from_pretrained`:
  - a Hugging Face `T5EncoderModel` or encoder-decoder (`T5ForConditionalGeneration`, e.g.
    google/byt5-xl) directory: config.json plus model.safetensors or pytorch_model.bin, either
    possibly sharded with its .index.json. The decoder and the LM head are dropped (from
    safetensors files they are never read);
  - a directory written by `save_t5_encoder` (`python -m paella_jax.convert t5 SRC OUT_DIR`).

The tokenizer is the offline ByT5 byte tokenizer when the model is a ByT5 (vocabulary of 384),
else None: a SentencePiece T5 needs its own tokenizer (transformers' T5TokenizerFast).

Command line:
    python -m paella_jax.convert t5 SRC OUT_DIR [--param-dtype bfloat16] [--max-length 768]
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paella_jax import checkpoint
from paella_jax.byt5_tokenizer import VOCAB_SIZE as BYT5_VOCAB_SIZE, ByT5Tokenizer
from paella_jax.convert.clip import _hf_weight_files
from paella_jax.convert.torch_io import (CheckpointMismatchError, check_state_dict,
                                         load_torch_file, to_numpy_state_dict)
from paella_jax.encoders.byt5 import load_t5_encoder, save_t5_encoder
from paella_jax.models.t5 import T5Config, T5Encoder, init_params

MODEL_TYPES = ("t5", "mt5")  # mT5 is T5 v1.1 with another vocabulary
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")  # tied: either holds it

_BLOCK = {"attention_norm": "layer.0.layer_norm", "attention": "layer.0.SelfAttention",
          "mlp_norm": "layer.1.layer_norm", "mlp": "layer.1.DenseReluDense"}
_LEAVES = {"scale": "weight", "kernel": "weight"}


def t5_config_from_hf(d: Mapping[str, Any]) -> T5Config:
  """T5Config of a Hugging Face config.json (model_type "t5" or "mt5"), with its defaults."""
  if d.get("model_type") not in MODEL_TYPES:
    raise CheckpointMismatchError(f"config.json describes a {d.get('model_type')!r} model, not a "
                                  f"T5 encoder (model_type one of {MODEL_TYPES})")
  import transformers
  hf = transformers.T5Config.from_dict(dict(d))
  return T5Config(vocab_size=hf.vocab_size, d_model=hf.d_model, d_kv=hf.d_kv, d_ff=hf.d_ff,
                  num_layers=hf.num_layers, num_heads=hf.num_heads,
                  relative_attention_num_buckets=hf.relative_attention_num_buckets,
                  relative_attention_max_distance=hf.relative_attention_max_distance,
                  feed_forward_proj=hf.feed_forward_proj,
                  layer_norm_epsilon=hf.layer_norm_epsilon)


def _hf_key(path: tuple[str, ...]) -> str:
  """Hugging Face state_dict key of a Flax parameter path."""
  if path == ("token_embedding", "embedding"):
    return "shared.weight"
  if path == ("relative_attention_bias",):
    return "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  if path == ("final_norm", "scale"):
    return "encoder.final_layer_norm.weight"
  block, module, *rest, leaf = path
  names = [f"encoder.block.{block[len('block_'):]}", _BLOCK[module], *rest, _LEAVES[leaf]]
  return ".".join(names)


def _is_encoder_key(key: str) -> bool:
  return key.startswith("encoder.") or key == "shared.weight"


def _read_encoder(path: str, dtype: Any) -> dict[str, np.ndarray]:
  """The encoder's tensors of one weight file as numpy arrays of `dtype`, converted one at a
  time (from safetensors, only the encoder's tensors are read)."""
  convert = lambda key, tensor: to_numpy_state_dict({key: tensor})[key].astype(dtype, copy=False)
  if path.endswith(".safetensors"):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
      return {k: convert(k, f.get_tensor(k)) for k in f.keys() if _is_encoder_key(k)}
  tensors = {k: v for k, v in load_torch_file(path).items() if _is_encoder_key(k)}
  return {k: convert(k, tensors.pop(k)) for k in list(tensors)}


def params_from_hf_state_dict(state_dict: Mapping[str, np.ndarray], config: T5Config, what: str,
                              param_dtype: Any = jnp.float32) -> dict[str, Any]:
  """Flax parameters of `T5Encoder(config)` from an encoder state_dict in Hugging Face naming.

  The embedding may be named shared.weight or encoder.embed_tokens.weight. Raises
  CheckpointMismatchError naming missing, unexpected and mis-shaped keys.
  """
  state_dict = dict(state_dict)
  embedding = next((state_dict.pop(k) for k in EMBEDDING_KEYS if k in state_dict), None)
  for key in EMBEDDING_KEYS:
    state_dict.pop(key, None)
  if embedding is not None:
    state_dict["shared.weight"] = embedding
  shapes = jax.eval_shape(lambda: init_params(T5Encoder(config), jax.random.key(0)))
  flat_shapes = traverse_util.flatten_dict(shapes)
  expected = {_hf_key(p): (s.shape[::-1] if p[-1] == "kernel" else s.shape)
              for p, s in flat_shapes.items()}
  check_state_dict(state_dict, expected, what)
  flat = {}
  for p in flat_shapes:
    x = state_dict[_hf_key(p)]
    flat[p] = (x.T if p[-1] == "kernel" else x).astype(param_dtype, copy=False)
  return traverse_util.unflatten_dict(flat)


def _load_hf_dir(directory: str, param_dtype: Any):
  with open(os.path.join(directory, "config.json")) as f:
    config = t5_config_from_hf(json.load(f))
  state_dict = {}
  for path in _hf_weight_files(directory):
    state_dict.update(_read_encoder(path, param_dtype))
  if not state_dict:
    raise CheckpointMismatchError(f"{directory}: the weights hold no T5 encoder tensors "
                                  "(encoder.*, shared.weight)")
  return config, params_from_hf_state_dict(state_dict, config, f"Hugging Face T5 {directory}",
                                           param_dtype)


def t5_encoder_from_pretrained(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                               param_dtype: Any = jnp.float32, max_length: int = 768):
  """Loads a T5 encoder: returns (module, params, ByT5Tokenizer or None).

  Args:
    path: a Hugging Face T5/ByT5 directory (encoder-only or encoder-decoder) or a directory
      written by `save_t5_encoder`.
    dtype: compute dtype of the matrix products (jnp.bfloat16 for speed; outputs stay float32).
    param_dtype: storage dtype of the returned parameters.
    max_length: the tokenizer's default maximum length (Paella v3: 768 bytes with </s>).
  """
  path = os.fspath(path)
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, checkpoint.MODEL_FILE)):
    return load_t5_encoder(path, dtype=dtype, param_dtype=param_dtype)
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path} is neither a Hugging Face model directory (no config.json) "
                            f"nor a paella-jax checkpoint (no {checkpoint.MODEL_FILE})")
  config, params = _load_hf_dir(path, jnp.dtype(param_dtype))
  params = jax.tree.map(jnp.asarray, params)
  tokenizer = ByT5Tokenizer(max_length) if config.vocab_size == BYT5_VOCAB_SIZE else None
  return T5Encoder(config, dtype=dtype, param_dtype=param_dtype), params, tokenizer


# ----------------------------------------------------------------------------- command line

def write_checkpoint(*, src: str, out_dir: str, param_dtype: str = "float32", max_length: int = 768,
                     overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  model, params, tokenizer = t5_encoder_from_pretrained(
      src, param_dtype=jnp.dtype(param_dtype), max_length=max_length)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  meta = {"source": os.path.abspath(src), "param_dtype": param_dtype}
  out = save_t5_encoder(out_dir, model, params, tokenizer, meta=meta,
                        overwrite=overwrite)
  kind = "ByT5" if tokenizer is not None else "T5 (no byte tokenizer: bring its SentencePiece one)"
  return (f"wrote {kind} encoder ({model.config.num_layers} layers, {n_params:,} parameters, "
          f"d_model {model.config.d_model}) to {out}")
