"""The console commands that `pip install .` puts on PATH (see pyproject.toml). Each parses
its own arguments; expected failures print one line `error: ...` (exit 2), --debug shows the
traceback."""

from __future__ import annotations

from paella_jax.cli import run_main


def sample() -> None:
  """paella-sample: generation and the editing modes (paella_jax/commands/sample.py)."""
  from paella_jax.commands.sample import main
  run_main(main)


def convert() -> None:
  """paella-convert: PyTorch weights -> paella-jax checkpoints, and back (to-torch)."""
  from paella_jax.commands.convert import main
  run_main(main)


def prepare() -> None:
  """paella-prepare: images and captions -> pre-encoded ArrayRecord shards."""
  from paella_jax.commands.prepare import main
  run_main(main)


def evaluate() -> None:
  """paella-eval: zero-shot FID, CLIP score and adherence of a checkpoint."""
  from paella_jax.commands.eval import main
  run_main(main)


def serve() -> None:
  """paella-serve: the pipeline as an HTTP service batching concurrent requests."""
  from paella_jax.commands.serve import main
  run_main(main)
