"""Device meshes, logical-axis rules and data-parallel helpers.

Parameters and activations of the models carry logical axis names (see `models/`); a config
maps them onto the mesh axes ("data", "fsdp", "tensor") with its `sharding.rules` (`make_mesh`,
`logical_shardings` for parameters, `with_logical_rules` for the activation constraints). The
logical axis "batch" names the mesh axes a batch's leading axis is split over.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def local_data_mesh() -> Mesh:
  """A 1-D mesh ("data",) over this process's local devices (for batched inference)."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def _pad_rows(x, rows: int):
  """Pads the leading axis of x to `rows` by repeating its last row."""
  pad = rows - x.shape[0]
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x


def data_parallel(fn: Callable[..., Any], mesh: Mesh | None = None,
                  chunk_size: int | None = None) -> Callable[..., Any]:
  """Wraps `fn(params, batch)` into a jit-compiled data-parallel function.

  `batch` is an array (or pytree of arrays) with a leading batch axis of any size: it is padded
  to a multiple of the mesh's "data" size, sharded over it, and the outputs are trimmed back.
  `params` are replicated. Compiles once per (padded) input shape.

  With `chunk_size`, the batch is processed in chunks of exactly that many rows (the last one
  padded), so any number of inputs compiles once and fits in memory; the result is then a
  numpy array on the host.
  """
  mesh = mesh or local_data_mesh()
  n = mesh.shape["data"]
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(fn, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)

  def run(params, batch):
    size = jax.tree.leaves(batch)[0].shape[0]
    padded = jax.tree.map(lambda x: _pad_rows(x, size + (-size) % n), batch)
    out = jitted(params, padded)
    return jax.tree.map(lambda x: x[:size], out) if size % n else out

  def run_in_chunks(params, batch):
    size = jax.tree.leaves(batch)[0].shape[0]
    if size == 0:
      raise ValueError("empty batch: give at least one input")
    outputs = []
    for start in range(0, size, chunk_size):
      chunk = jax.tree.map(lambda x: x[start:start + chunk_size], batch)
      rows = jax.tree.leaves(chunk)[0].shape[0]
      out = run(params, jax.tree.map(lambda x: _pad_rows(x, chunk_size), chunk))
      outputs.append(jax.tree.map(lambda x: np.asarray(x[:rows]), out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)

  return run if chunk_size is None else run_in_chunks


MESH_AXES = ("data", "fsdp", "tensor")


def _fill(shape: tuple[int, ...], total: int, what: str) -> tuple[int, ...]:
  """Replaces one -1 in `shape` so that its product is `total`."""
  if list(shape).count(-1) > 1:
    raise ValueError(f"{what} {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if total % known:
    raise ValueError(f"{what} {shape} does not divide {total} devices")
  shape = tuple(total // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != total:
    raise ValueError(f"{what} {shape} has {int(np.prod(shape))} devices, not {total}")
  return shape


def make_mesh(mesh_config: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """The training mesh of a config: axes ("data", "fsdp", "tensor").

  mesh_config.shape: per-slice (ICI) sizes, one -1 filled from the device count.
  mesh_config.dcn_shape: sizes across slices (multi-slice, over the data-centre network); the
  mesh's axis sizes are the products ici * dcn. `devices` defaults to jax.devices() (pass the
  abstract devices of a TPU topology for ahead-of-time compilation).
  """
  from jax.experimental import mesh_utils
  devices = list(jax.devices() if devices is None else devices)
  dcn = tuple(mesh_config.get("dcn_shape", (1,) * len(MESH_AXES)))
  num_slices = int(np.prod(dcn))
  if len(devices) % num_slices:
    raise ValueError(f"dcn_shape {dcn} does not divide {len(devices)} devices")
  ici = _fill(tuple(mesh_config.shape), len(devices) // num_slices, "mesh.shape")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Config rules ((logical, mesh axis | tuple of axes | None), ...) as flax expects them."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in rules)


def logical_shardings(boxed: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings of a tree of abstract parameters that carry logical axis names (the
  `jax.eval_shape` of an init with `nn.Partitioned` leaves), mapped onto `mesh` by `rules`.

  A dimension that its mesh axes do not divide stays whole (replicated over those axes) instead
  of failing: e.g. the 640-channel level of Paella v3 on fsdp=256, whose 1280- and 2560-wide
  weights still split 256 ways. Such parameters are logged once, with their count and bytes.
  """
  from flax import linen as nn
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                          logical_rules(rules))
  whole = []

  def fit(path, sharding, leaf):
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    fitted = tuple(None if axes is not None and dim % _axes_size(mesh, axes) else axes
                   for dim, axes in zip(leaf.shape, spec))
    if fitted == spec:
      return sharding
    whole.append((jax.tree_util.keystr(path), leaf.shape, leaf.size * leaf.dtype.itemsize))
    return NamedSharding(mesh, P(*fitted))

  fitted = jax.tree_util.tree_map_with_path(fit, shardings, nn.meta.unbox(boxed))
  if whole:
    import logging
    logging.getLogger("paella_jax.sharding").warning(
        "%d arrays (%.1f MiB) are not split over a mesh axis that does not divide them, e.g. "
        "%s %s on mesh %s", len(whole), sum(w[2] for w in whole) / 2 ** 20, whole[0][0],
        whole[0][1], dict(mesh.shape))
  return fitted


def _axes_size(mesh: Mesh, axes: Any) -> int:
  """The number of devices along a mesh axis or a tuple of them."""
  return int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))


def with_logical_rules(fn: Callable[..., Any], mesh: Mesh, rules: Any) -> Callable[..., Any]:
  """`fn` traced with `mesh` and the logical axis `rules` in context, so that the
  `nn.with_logical_constraint`s inside the models pin their activations to mesh axes (without
  this context they are no-ops). Wrap the function before jit-compiling it."""
  from flax import linen as nn

  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
        nn.logical_axis_rules(logical_rules(rules)):
      return fn(*args, **kwargs)

  return wrapped


def batch_sharding(mesh: Mesh, rules: Any) -> NamedSharding:
  """Sharding of a batch's leading axis: the mesh axes of the logical axis "batch"."""
  axes = dict(logical_rules(rules)).get("batch")
  return NamedSharding(mesh, P(axes))


def process_rows(sharding: NamedSharding, global_batch: int) -> slice:
  """The contiguous rows of a global batch that live on this process's devices.

  Each process loads only these rows; `jax.make_array_from_process_local_data` assembles them.
  """
  index = sharding.addressable_devices_indices_map((global_batch,))
  starts = sorted({idx[0].indices(global_batch)[:2] for idx in index.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  if covered != hi - lo:
    raise ValueError(f"this process's batch rows are not contiguous: {starts}")
  return slice(lo, hi)


def global_batch(local: Any, sharding: NamedSharding, global_size: int) -> Any:
  """Assembles each process's rows (a pytree of numpy arrays) into global jax.Arrays."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x, (global_size, *x.shape[1:])),
      local)
