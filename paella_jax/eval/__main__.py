"""`python -m paella_jax.eval`: zero-shot FID, CLIP score and adherence (see eval/run.py)."""

from paella_jax.eval.run import cli_main

if __name__ == "__main__":
  cli_main()
