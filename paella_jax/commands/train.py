"""Train the Paella token predictor, or run the built-in demo (`paella-train`, `python train.py`).

    python train.py                       # the demo (configs/demo.py) end to end, in runs/demo
    paella-train --config configs/tiny.py --workdir runs/tiny
    paella-train --config configs/paella_v1.py --config.data.source=arrays \
        --config.data.path=data/encoded.npz --workdir runs/paella_v1

Any config field can be overridden on the command line (--config.train.total_steps=1000). A
config file may import the configs beside it (`from configs import tiny`): the folder holding
its `configs` package is made importable. A config whose `job` is "demo" runs the demo.

Multi-host (every host runs the same command): on a TPU pod slice or a cluster JAX detects
(SLURM, ...) add --multihost; elsewhere name the coordinator and the process:
    paella-train ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

Expected failures (bad data, a workdir of another model, ...) print one line `error: ...` and
exit with status 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from paella_jax.cli import config_path, run_absl

DEMO_CONFIG = os.path.join("configs", "demo.py")

config_flags.DEFINE_config_file("config", None, "Config file (get_config()); default: "
                                f"{DEMO_CONFIG}, the built-in demo.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the model "
                    "(default: the demo config's workdir, runs/demo; runs/default otherwise).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() from the environment "
                  "(TPU pod slices, SLURM, ...).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
flags.DEFINE_enum("cpu_collectives", None, ["gloo", "mpi"],
                  "Collectives between CPU processes (multi-process runs without accelerators).")
flags.DEFINE_bool("debug", False, "Show the traceback of expected failures.")
FLAGS = flags.FLAGS


def initialize_distributed():
  import jax
  if FLAGS.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
  if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()


def main(argv):
  del argv
  from paella_jax.cli import one_line_errors
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save info lines out of the way
  with one_line_errors(FLAGS.debug):
    initialize_distributed()
    if FLAGS.config.get("job") == "demo":
      run_demo(FLAGS.config, FLAGS.workdir or FLAGS.config.get("workdir", "runs/demo"))
      return
    from paella_jax.training.loop import train
    train(FLAGS.config, FLAGS.workdir or "runs/default", progress=FLAGS.progress)


def run_demo(config, workdir: str) -> None:
  from paella_jax import demo
  report = demo.run(config, workdir, progress=FLAGS.progress)
  print(f"\ndemo finished in {report['minutes']:.1f} min; samples: {workdir}/samples/grid.png; "
        f"report: {workdir}/report.json")
  print("prompt adherence    colour  shape  position  all")
  for name in ("seen", "held_out"):
    r = report[name]
    print(f"  {name:<16}  {r['colour']:6.1%} {r['shape']:6.1%}  {r['position']:7.1%} {r['all']:5.1%}"
          f"   ({r['count']} images)")
  print('try: python sample.py --prompt "a blue square in the bottom right"')


def cli_main(argv: list[str] | None = None, default_config: str = DEMO_CONFIG) -> None:
  """Runs the command (argv with the program name first; default sys.argv)."""
  argv = list(sys.argv if argv is None else argv)
  path = config_path(argv)
  if path is None:
    if not os.path.isfile(default_config):
      raise SystemExit(f"error: no --config given and no {default_config} here; pass "
                       "--config path/to/configs/NAME.py")
    path = default_config
    argv.insert(1, f"--config={path}")  # before any --config.FIELD override, which needs it
  run_absl(main, argv)
