"""Train Paella: the whole system, stage 1 (the VQGAN) or stage 2 (the token predictor)
(`paella-train`, `python train.py`). The config's `job` says which:

    paella-train                                    # the demo (--config demo) end to end, runs/demo
    paella-train --config folder --config.data.path=FOLDER    # the same on your images (pipeline)
    paella-train --config vqgan_tiny --config.data.path=FOLDER --workdir runs/vqgan    # vqgan
    paella-train --config tiny --workdir runs/tiny                                      # paella
    paella-train --config paella_v1 --config.data.source=records \
        --config.data.path=data/encoded --workdir runs/paella_v1

--config takes a preset's name (the configs shipped in paella_jax/configs) or a config file's
path; a config file of your own builds on the presets (`from paella_jax.configs import tiny`).
Any config field can be overridden on the command line (--config.train.total_steps=1000).

Multi-host (every host runs the same command): on a TPU pod slice or a cluster JAX detects
(SLURM, ...) add --multihost; elsewhere name the coordinator and the process:
    paella-train ... --coordinator-address=host0:1234 --num-processes=2 --process-id=0

Expected failures (bad data, a workdir of another model, ...) print one line `error: ...` and
exit with status 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from paella_jax.cli import DEBUG_FLAG, config_path, one_line_errors, run_absl
from paella_jax.configs import with_config_file

DEFAULT_CONFIG = "demo"
JOBS = ("pipeline", "vqgan", "paella")

config_flags.DEFINE_config_file("config", None, "A preset's name (tiny, demo, folder, "
                                "paella_v1, ...) or a config file (get_config()); default: "
                                f"{DEFAULT_CONFIG}, the built-in demo.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the model (default: "
                    "the config's workdir field, e.g. runs/demo; runs/default without one).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() from the environment "
                  "(TPU pod slices, SLURM, ...).")
flags.DEFINE_string("coordinator-address", None, "host:port of process 0 (explicit multi-host).")
flags.DEFINE_integer("num-processes", None, "Number of processes (explicit multi-host).")
flags.DEFINE_integer("process-id", None, "This process's index (explicit multi-host).")
flags.DEFINE_enum("cpu-collectives", None, ["gloo", "mpi"],
                  "Collectives between CPU processes (multi-process runs without accelerators).")
flags.DEFINE_bool("debug", False, "Show the traceback of expected failures.")
FLAGS = flags.FLAGS


def initialize_distributed():
  import jax
  collectives, coordinator = FLAGS["cpu-collectives"].value, FLAGS["coordinator-address"].value
  processes, process = FLAGS["num-processes"].value, FLAGS["process-id"].value
  if collectives:
    jax.config.update("jax_cpu_collectives_implementation", collectives)
  if coordinator or processes or process is not None:
    jax.distributed.initialize(coordinator, processes, process)
  elif FLAGS.multihost:
    jax.distributed.initialize()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save info lines out of the way
  with one_line_errors(FLAGS.debug):
    config = FLAGS.config
    job = config.get("job")
    if job not in JOBS:
      raise ValueError(f"the config's job is {job!r}; expected one of {', '.join(JOBS)} (the "
                       "field `job` of the config: set it, or build on a preset)")
    initialize_distributed()
    workdir = FLAGS.workdir or config.get("workdir", "runs/default")
    if job == "pipeline":
      from paella_jax.training.end_to_end import run, summary
      print(summary(config, run(config, workdir, progress=FLAGS.progress), workdir))
    elif job == "vqgan":
      from paella_jax.training.vqgan_loop import train_vqgan_job
      train_vqgan_job(config, workdir, progress=FLAGS.progress)
      print(f"done: VQGAN written to {workdir}/model")
    else:
      from paella_jax.training.loop import train
      train(config, workdir, progress=FLAGS.progress)


def cli_main(argv: list[str] | None = None, default_config: str = DEFAULT_CONFIG) -> None:
  """Runs the command (argv with the program name first; default sys.argv). --config NAME
  takes the preset of that name (paella_jax/configs); without --config, `default_config`."""
  argv = list(sys.argv if argv is None else argv)
  if config_path(argv) is None:
    argv.insert(1, f"--config={default_config}")  # before any --config.FIELD override
  with one_line_errors(DEBUG_FLAG in argv):
    argv = with_config_file(argv)
  run_absl(main, argv)
