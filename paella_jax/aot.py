"""Ahead-of-time compile of the sharded train step for a TPU topology, on any machine
(paella-aot: paella_jax/commands/aot.py).

Builds the config's mesh over the topology's abstract devices (libtpu, from `jax[tpu]`), lowers
and compiles the real train step with the config's shardings, and reports per-device memory
(arguments, temporaries, outputs) against the chip's HBM, FLOPs per step and FITS / DOES NOT
FIT. Nothing is chosen for you: mesh and rules are the config's (override them with
--config.mesh.shape=..., --config.sharding.rules=...).

Expected failures (a topology libtpu does not know, a batch that does not split over the mesh, an
override of a config field that does not exist, no libtpu) print one line `error: ...` and exit
with status 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

from paella_jax.hardware import GiB, chip_info, out_of_memory

class DoesNotFit(Exception):
  """The compiler itself found that the step exceeds the chip's HBM."""


@dataclasses.dataclass
class Report:
  """Per-device bytes and FLOPs of one compiled train step."""
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict
  remat: str
  global_batch: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  flops: float
  hbm_bytes: int | None

  @property
  def peak_bytes(self) -> int:
    """Arguments + temporaries + outputs not aliased to (donated) arguments."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes

  def __str__(self) -> str:
    gb = lambda b: f"{b / GiB:8.2f} GiB" if b >= GiB else f"{b / 2 ** 20:8.2f} MiB"
    hbm = gb(self.hbm_bytes) if self.hbm_bytes else "unknown"
    verdict = {True: "FITS", False: "DOES NOT FIT", None: "UNKNOWN (no HBM size for this chip)"}
    return "\n".join([
        f"topology       {self.topology}: {self.num_devices} x {self.device_kind}",
        f"mesh           {self.mesh}, remat {self.remat}",
        f"global batch   {self.global_batch} ({self.global_batch / self.num_devices:g} per device)",
        "per device:",
        f"  arguments    {gb(self.argument_bytes)}  (params, optimizer state, EMA, batch shard)",
        f"  temporaries  {gb(self.temp_bytes)}  (activations, gradients, workspace)",
        f"  outputs      {gb(self.output_bytes)}  ({gb(self.alias_bytes).strip()} aliased to "
        f"donated arguments)",
        f"  peak         {gb(self.peak_bytes)}  of {hbm} HBM",
        f"  FLOPs/step   {self.flops / 1e9:8.1f} GFLOP",
        f"total FLOPs    {self.flops * self.num_devices / 1e12:8.1f} TFLOP per step "
        f"({self.flops * self.num_devices / self.global_batch / 1e9:.1f} GFLOP per image)",
        verdict[self.fits]])


def tpu_devices(topology: str, num_slices: int = 1):
  """The abstract devices of a TPU topology ("v5e:16x16"); needs libtpu (`jax[tpu]`).
  OSError without libtpu, ValueError for a topology it does not know."""
  from jax.experimental import topologies
  if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
    raise OSError("libtpu is not installed: compiling for a TPU topology needs it, on any "
                  "machine (pip install 'jax[tpu]')")
  # libtpu refuses a second loader on the same machine unless told it may (no TPU is opened).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if "tpu" not in (jax.config.jax_platforms or ""):
    # No TPU is used here: describe this machine as a single host without one, instead of
    # letting libtpu query a TPU VM's metadata and log errors about what it cannot find.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")
  try:
    return topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                        num_slices=num_slices).devices
  except jax.errors.JaxRuntimeError as e:
    prefix = "INVALID_ARGUMENT: "
    if not str(e).startswith(prefix):
      raise
    raise ValueError(f"--topology {topology}: {str(e)[len(prefix):]} (e.g. v5e:16x16, v4:2x2x2, "
                     "v5p:4x4x4)") from None


def compile_report(config, devices, topology: str, global_batch: int | None = None) -> Report:
  """Compiles the config's train step over `devices` and measures it."""
  from paella_jax.training.partition import Trainer
  batch = global_batch or config.train.batch_size
  trainer = Trainer.create(config, devices)
  try:
    compiled = trainer.compile(batch)
  except jax.errors.JaxRuntimeError as e:
    if not out_of_memory(e):
      raise
    raise DoesNotFit(str(e).splitlines()[0]) from None
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  kind = devices[0].device_kind
  info = chip_info(kind)
  return Report(topology, kind, len(devices), dict(trainer.mesh.shape), trainer.model.remat, batch,
                memory.argument_size_in_bytes, memory.temp_size_in_bytes,
                memory.output_size_in_bytes, memory.alias_size_in_bytes,
                float(cost.get("flops", 0.0)), info[1] if info else None)
