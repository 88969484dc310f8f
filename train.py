"""Train the Paella token predictor, or run the built-in demo (the `paella-train` command).

    python train.py                       # the demo (configs/demo.py) end to end, in runs/demo
    python train.py --config configs/tiny.py --workdir runs/tiny

See paella_jax/commands/train.py or `python train.py --help`.
"""

import os

from paella_jax.commands.train import cli_main

if __name__ == "__main__":
  cli_main(default_config=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                                       "demo.py"))
