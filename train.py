"""Train Paella: the built-in demo by default (the `paella-train` command).

    python train.py                       # the demo (configs/demo.py) end to end, in runs/demo
    python train.py --config folder --config.data.path=FOLDER     # the same on your images
    python train.py --config configs/tiny.py --workdir runs/tiny

See paella_jax/commands/train.py or `python train.py --help`.
"""

from paella_jax.commands.train import cli_main

if __name__ == "__main__":
  cli_main()
