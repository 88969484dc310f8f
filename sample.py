"""Sample images from a paella-jax checkpoint (the `paella-sample` command); see
paella_jax/commands/sample.py or `python sample.py --help`."""

from paella_jax.commands.entry_points import sample

if __name__ == "__main__":
  sample()
