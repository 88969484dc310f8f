"""`paella-convert clip-random --config clip_tiny OUT`: a CLIP with RANDOM seeded weights (the
demo's frozen text encoder) saved as a checkpoint with its tokenizer, for `paella-prepare --clip`
and `paella-sample --clip`. The weights depend only on the config's model and seed."""

from __future__ import annotations


FROM_HUB = False  # nothing to fetch: no --from-hub


def write_checkpoint(*, out_dir: str, config: str = "clip_tiny", overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  from paella_jax.configs import load
  from paella_jax.encoders.clip import save_random_clip
  out = save_random_clip(out_dir, load(config), overwrite=overwrite)
  return f"random CLIP ({config}) written to {out}"
