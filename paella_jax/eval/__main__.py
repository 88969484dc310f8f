"""`python -m paella_jax.eval`: paella-eval from a clone (paella_jax/commands/eval.py)."""

if __name__ == "__main__":
  from paella_jax.cli import run_main
  from paella_jax.commands.eval import main
  run_main(main)
