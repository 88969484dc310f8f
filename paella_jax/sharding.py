"""Device meshes, logical-axis rules and data-parallel helpers.

Parameters of the models carry logical axis names (see `models/`); a config maps them onto the
mesh axes ("data", "fsdp", "tensor") with `logical_axis_rules`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def local_data_mesh() -> Mesh:
  """A 1-D mesh ("data",) over this process's local devices (for batched inference)."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def data_parallel(fn: Callable[..., Any], mesh: Mesh | None = None) -> Callable[..., Any]:
  """Wraps `fn(params, batch, *static)` into a jit-compiled data-parallel function.

  `batch` is an array (or pytree of arrays) with a leading batch axis of any size: it is padded
  to a multiple of the mesh's "data" size, sharded over it, and the outputs are trimmed back.
  `params` are replicated. Compiles once per (padded) input shape.
  """
  mesh = mesh or local_data_mesh()
  n = mesh.shape["data"]
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(fn, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)

  def run(params, batch):
    size = jax.tree.leaves(batch)[0].shape[0]
    pad = (-size) % n
    if pad:
      batch = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), batch)
    out = jitted(params, batch)
    return jax.tree.map(lambda x: x[:size], out) if pad else out

  return run
