"""Sample images from a paella-jax checkpoint (the `paella-sample` command); see
paella_jax/commands/sample.py or `python sample.py --help`."""

from paella_jax.commands.sample import cli_main

if __name__ == "__main__":
  cli_main()
