"""`python -m paella_jax.convert`: paella-convert from a clone (paella_jax/commands/convert.py)."""

if __name__ == "__main__":
  from paella_jax.cli import run_main
  from paella_jax.commands.convert import main
  run_main(main)
