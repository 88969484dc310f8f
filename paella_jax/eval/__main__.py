"""`python -m paella_jax.eval`: zero-shot FID, CLIP score and adherence (see eval/run.py)."""

from paella_jax.eval.run import main

if __name__ == "__main__":
  main()
