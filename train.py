"""Train the Paella token predictor.

    python train.py --config configs/tiny.py --workdir runs/tiny
    python train.py --config configs/paella_v1.py --config.data.source=arrays \
        --config.data.path=data/encoded.npz --workdir runs/paella_v1

Any config field can be overridden on the command line (--config.train.total_steps=1000).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Config file (get_config()).")
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, logs and the model.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save info lines out of the way
  from paella_jax.training.loop import train
  train(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress)
  print(f"done: model written to {os.path.join(FLAGS.workdir, 'model')}")


if __name__ == "__main__":
  app.run(main)
