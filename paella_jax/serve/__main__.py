"""`python -m paella_jax.serve`: paella-serve from a clone (paella_jax/commands/serve.py)."""

if __name__ == "__main__":
  from paella_jax.cli import run_main
  from paella_jax.commands.serve import main
  run_main(main)
