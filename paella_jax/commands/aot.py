"""paella-aot: ahead-of-time compile of the sharded train step for a TPU topology, anywhere.

    paella-aot --config paella_v1 --topology v5e:16x16 --global-batch 1408
    paella-aot --config paella_v1 --topology v5e:16x16 --num-slices 2 \
        --config.mesh.dcn_shape="(2,1,1)"

Reports per-device memory against the chip's HBM, FLOPs per step and FITS / DOES NOT FIT (see
paella_jax/aot.py); exit status 1 when it does not fit. Expected failures print one line
`error: ...` and exit with status 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from paella_jax.aot import DoesNotFit, compile_report, tpu_devices
from paella_jax.cli import DEBUG_FLAG, one_line_errors, run_absl
from paella_jax.configs import with_config_file

config_flags.DEFINE_config_file("config", None, "A preset's name or a config file (get_config()).",
                                lock_config=False)
flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:16x16, v4:2x2x2, v5p:4x4x4.")
flags.DEFINE_integer("num-slices", 1, "Number of slices (multi-slice; see config.mesh.dcn_shape).")
flags.DEFINE_integer("global-batch", None, "Global batch (default: config.train.batch_size).")
flags.DEFINE_bool("debug", False, "Show the traceback of expected failures.")


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config is None:
    raise ValueError("--config is required (a preset, e.g. paella_v1, or a config file)")
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")  # the host only traces; a local TPU stays free
  topology = flags.FLAGS.topology
  devices = tpu_devices(topology, flags.FLAGS["num-slices"].value)
  try:
    report = compile_report(config, devices, topology, flags.FLAGS["global-batch"].value)
  except DoesNotFit as e:
    print(f"{e}\nDOES NOT FIT")
    sys.exit(1)
  print(report)
  sys.exit(0 if report.fits is not False else 1)


def cli_main() -> None:
  """The `paella-aot` command (also `python -m paella_jax.commands.aot`)."""
  argv = list(sys.argv)
  with one_line_errors(DEBUG_FLAG in argv):
    argv = with_config_file(argv)  # --config paella_v1: the preset's file
  run_absl(main, argv)


if __name__ == "__main__":
  cli_main()
