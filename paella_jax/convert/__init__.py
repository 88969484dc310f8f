"""Converters from public PyTorch checkpoints to paella-jax (Flax) parameters.

    from paella_jax.convert import paella_v1_from_torch, vqgan_from_torch, clip_from_pretrained

Each converter lives in its own module and is imported on first use, so that using one never
requires the dependencies of another (torch, safetensors, diffusers).
"""

import importlib

_EXPORTS = {
    "paella_v1_from_torch": "paella_jax.convert.paella",
    "paella_v3_from_torch": "paella_jax.convert.paella_v3",
    "vqgan_from_torch": "paella_jax.convert.vqgan",
    "clip_from_pretrained": "paella_jax.convert.clip",
    "t5_encoder_from_pretrained": "paella_jax.convert.t5",
    "inception_from_torch": "paella_jax.convert.inception",
    "to_torch": "paella_jax.convert.to_torch",
    "torch_state_dict": "paella_jax.convert.to_torch",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
