"""The FID Inception weights (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, the TF graph's
weights that pytorch-fid and torch-fidelity use) -> `paella_jax.models.inception.InceptionV3`.

The state_dict has torchvision's Inception3 names (`Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_var`, ...). Each BasicConv2d's BatchNorm (eps 1e-3) is folded into
its conv, in float64: kernel = W * g / sqrt(var + eps), bias = b - mean * g / sqrt(var + eps).
The 1008-way classifier (`fc.*`) and `num_batches_tracked` counters are not used by the FID and
are dropped; anything else missing, unexpected or mis-shaped raises a CheckpointMismatchError.

    python -m paella_jax.convert inception pt_inception-2015-12-05-6726825d.pth ckpts/inception_fid
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.encoders.inception import save_inception
from paella_jax.convert.torch_io import check_state_dict, load_torch_file, to_numpy_state_dict
from paella_jax.models.inception import InceptionV3

BN_EPS = 1e-3
_IGNORED = re.compile(r"^fc\.|\.num_batches_tracked$")


def _conv_shapes(module: InceptionV3) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path of each conv: its Flax kernel shape (kh, kw, in, out)}, from an abstract init."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path[:-1]): leaf.shape for path, leaf in flat
          if path[-1].key == "kernel"}


def params_from_state_dict(state_dict: Mapping[str, Any], what: str = "state_dict") -> dict:
  """A pytorch-fid Inception state_dict (tensors or arrays) -> folded Flax params (float32)."""
  state_dict = {k: v for k, v in to_numpy_state_dict(state_dict).items() if not _IGNORED.search(k)}
  convs = _conv_shapes(InceptionV3(resize_to=None))
  expected = {}
  for path, (kh, kw, cin, cout) in convs.items():
    prefix = ".".join(path)
    expected[f"{prefix}.conv.weight"] = (cout, cin, kh, kw)
    for name in ("weight", "bias", "running_mean", "running_var"):
      expected[f"{prefix}.bn.{name}"] = (cout,)
  check_state_dict(state_dict, expected, f"the FID Inception v3 ({what})")
  params: dict = {}
  for path in convs:
    prefix = ".".join(path)
    get = lambda name: np.asarray(state_dict[f"{prefix}.{name}"], np.float64)
    scale = get("bn.weight") / np.sqrt(get("bn.running_var") + BN_EPS)
    kernel = get("conv.weight").transpose(2, 3, 1, 0) * scale
    bias = get("bn.bias") - get("bn.running_mean") * scale
    node = params
    for key in path:
      node = node.setdefault(key, {})
    node.update(kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
  return params


def inception_from_torch(source, resize_to: int | None = 299) -> tuple[InceptionV3, dict]:
  """A `.pth` path or an in-memory state_dict -> (InceptionV3 module, params)."""
  if isinstance(source, Mapping):
    state_dict, what = source, "state_dict"
  else:
    state_dict, what = load_torch_file(source), os.path.basename(os.fspath(source))
  return InceptionV3(resize_to=resize_to), params_from_state_dict(state_dict, what)


# ----------------------------------------------------------------------------------------------
# Command line


def write_checkpoint(*, checkpoint: str, out_dir: str, overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  module, params = inception_from_torch(checkpoint)
  out = save_inception(out_dir, module, params, overwrite=overwrite,
                       meta={"source": os.path.basename(checkpoint)})
  n = sum(np.size(x) for x in jax.tree.leaves(params))
  return f"wrote the FID Inception v3 ({n:,} parameters, BatchNorm folded) to {out}"
