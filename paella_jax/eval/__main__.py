"""`python -m paella_jax.eval`: zero-shot FID, CLIP score and adherence (see eval/run.py)."""

from paella_jax.commands.entry_points import evaluate

if __name__ == "__main__":
  evaluate()
