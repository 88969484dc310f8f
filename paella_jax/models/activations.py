"""Activation functions by the names the original libraries give them (transformers' ACT2FN,
open_clip, taming), for every model of the package: one table.

"gelu" is the exact (erf) GELU; "gelu_new" and "gelu_pytorch_tanh" its tanh approximation;
"quick_gelu" is x * sigmoid(1.702 x) (OpenAI CLIP); "swish" and "silu" are x * sigmoid(x);
"mish" is x * tanh(softplus(x)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def activation(name: str):
  """The function of an activation name; a ValueError naming the known ones otherwise."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]
