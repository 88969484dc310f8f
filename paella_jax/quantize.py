"""Inference precision of the frozen models: bfloat16 weights, or int8 weights through qwix.

    pipe = Pipeline.from_checkpoint("ckpts/paella_v3", quantize="int8")
    paella-sample --checkpoint ckpts/paella_v3 --quantize int8 --prompt "a red fox"

- None: the checkpoint's own parameter and compute dtypes (float32 for converted weights).
- "bfloat16": every floating parameter held in bfloat16 and the model computing in bfloat16.
- "int8": as bfloat16, and the kernel of every matrix product (the Dense and DenseGeneral
  layers, the attention projections, the einsum projections) held as int8 with one bfloat16
  scale per output channel (symmetric, absmax over the contracted axes); the products
  dequantize inside the jit program ("weight-only": activations stay bfloat16). Convolutions
  (depthwise and patch kernels), embeddings, norms and biases stay bfloat16; they hold a few
  percent of the weights.

The token predictors, CLIP and the T5/ByT5 encoder take both; the VQ codec keeps its own dtypes
(a small model whose decoder makes the pixels). qwix (Google's JAX quantization library, also
our LoRA) intercepts the layers' products, so no model has quantization code of its own: a
quantized model is `qwix.quantize_model(model, ...)`, whose params tree holds each quantized
kernel as a qwix array (`qvalue` int8, `scale`) under the kernel's name, with its logical axis
names kept, so it shards as the float tree does. The weights are quantized on the host CPU
before they reach the accelerator, so a model whose float32 weights would not fit it can still
be loaded in int8.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

QUANTIZATIONS = ("bfloat16", "int8")
INT8_OPS = ("dot_general", "einsum")  # products of activations with kernels; never convolutions


def check(mode: str | None) -> str | None:
  """`mode` if it names a quantization (or is None); ValueError listing them otherwise."""
  if mode is not None and mode not in QUANTIZATIONS:
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or none), got "
                     f"{mode!r}")
  return mode


def quantize(model, params: Any, mode: str | None, example_inputs: Sequence[Any],
             methods: Sequence[str] = ("__call__",)):
  """(model, params) held in `mode` (see the module docstring); None returns them unchanged.

  Args:
    model: a flax module with `dtype` and `param_dtype` fields.
    params: its float params (numpy or jax arrays, anywhere); read, never changed.
    example_inputs: the arguments of one `model.init` call (its shapes are all that is used).
    methods: the model's methods that callers apply (CLIP: "encode_text", "encode_image").
  Returns:
    (the model to apply, its params on the default device).
  """
  if check(mode) is None:
    return model, params
  model = model.clone(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  with loading(mode):
    params = jax.tree.map(_bfloat16, params)
    if mode == "int8":
      model, params = _int8(model, params, example_inputs, methods)
  return model, jax.device_put(params, jax.devices()[0])


def loading(mode: str | None):
  """A context for reading weights that `quantize` will hold in `mode`: on the host CPU when
  quantizing (so float32 weights never reach the accelerator), unchanged otherwise."""
  return jax.default_device(jax.devices("cpu")[0]) if check(mode) else contextlib.nullcontext()


def _bfloat16(x):
  x = jnp.asarray(x)
  return x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x


def _int8(model, params, example_inputs, methods):
  import qwix
  from flax import linen as nn
  rule = qwix.QuantizationRule(module_path=".*", weight_qtype="int8", op_names=INT8_OPS)
  quantized = qwix.quantize_model(model, qwix.PtqProvider([rule]), methods=methods)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: quantized.init(jax.random.key(0), *example_inputs)["params"]))
  return quantized, qwix.quantize_params(params, abstract)


def weight_bytes(params: Any) -> int:
  """Bytes of every array in `params` (quantized ones: their int8 values and scales)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
