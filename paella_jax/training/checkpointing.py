"""Training checkpoints in WORKDIR/checkpoints: the Orbax manager and restoring the latest one."""

from __future__ import annotations

import os

from paella_jax.training.step import TrainState


def checkpoint_manager(workdir: str, config):
  """An async Orbax CheckpointManager keeping the last `keep_checkpoints` steps. Orbax writes
  each step to a temporary directory and renames it when complete, so a save killed midway is
  never listed as a step."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def restore_checkpoint(manager, abstract_state: TrainState) -> tuple[TrainState, dict] | None:
  """The latest complete checkpoint as (state, data iterator state), or None. The arrays are
  placed with the shardings of `abstract_state` (which may differ from those saved)."""
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]
