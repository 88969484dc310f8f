"""Training checkpoints in WORKDIR/checkpoints, the one module that writes and reads them: the
Orbax manager, saving (the train state and the data iterator's state), and restoring the newest
checkpoint that can be read.

A step that cannot be restored (a truncated or damaged file) is reported in one warning line
and the next older step is restored instead; the unreadable steps are then moved to
WORKDIR/checkpoints.unreadable/STEP (kept for inspection, out of the way of new saves). In a
multi-process job a step counts as restored only when every process restored it. A workdir
trained with another model is one error naming a parameter and both shapes, before any array
is read.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from paella_jax.checkpoint import error_reason, quiet_failed_reads, tree_leaves_by_name
from paella_jax.training.step import TrainState

log = logging.getLogger("paella_jax.training")
UNREADABLE_DIR = "checkpoints.unreadable"


def checkpoint_manager(workdir: str, config):
  """An async Orbax CheckpointManager keeping the last `keep_checkpoints` steps. Orbax writes
  each step to a temporary directory and renames it when complete, so a save killed midway is
  never listed as a step."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save_checkpoint(manager, state: TrainState, data_state: dict, force: bool = False) -> None:
  """Saves `state` and the data iterator's JSON state as step `state.step` (asynchronously;
  `force` saves even off the manager's interval, e.g. on preemption)."""
  import orbax.checkpoint as ocp
  manager.save(int(state.step), force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_checkpoint(manager, abstract_state: TrainState) -> tuple[TrainState, dict] | None:
  """The newest checkpoint that restores, as (state, data iterator state), or None when there
  is none. The arrays are placed with the shardings of `abstract_state` (which may differ from
  those saved).

  Raises ValueError when a checkpoint holds a model of another shape, or when checkpoints exist
  but none of them can be read.
  """
  import orbax.checkpoint as ocp
  failed = []  # (step, reason) of the unreadable steps newer than the one restored
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = _saved_shapes(manager, step)
    except Exception as e:  # noqa: BLE001  Orbax and TensorStore raise plain Exceptions
      failed.append((step, error_reason(e)))
      quiet_failed_reads()
      continue
    _check_shapes(saved, abstract_state, manager.directory, step)
    reason = None
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      reason = error_reason(e)
      quiet_failed_reads()
    if not _everywhere(reason is None):  # each process reads its own shards of the arrays
      failed.append((step, reason or "unreadable on another process"))
      continue
    if failed:
      _set_aside(manager, failed, step)
    return restored["state"], restored["data"]
  if failed:
    raise ValueError(f"no checkpoint in {manager.directory} can be restored (step "
                     f"{failed[0][0]}: {failed[0][1]}); move that directory away to start afresh")
  return None


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process (so that all of them restore the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _saved_shapes(manager, step: int) -> dict[str, tuple[int, ...]]:
  """{"params/clf/kernel": shape, ...} of a step's saved state, from its metadata alone."""
  import orbax.checkpoint as ocp
  from etils import epath
  metadata = ocp.StandardCheckpointHandler().metadata(
      epath.Path(manager.directory) / str(step) / "state")
  return _shapes(getattr(metadata, "tree", metadata))


def _shapes(tree) -> dict[str, tuple[int, ...] | None]:
  """{"params/clf/kernel": shape, ...}; None for PRNG keys (saved as their raw key data)."""
  def shape(leaf):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return None
    return tuple(getattr(leaf, "shape", ()))
  return {name: shape(leaf) for name, leaf in tree_leaves_by_name(tree)}


def _check_shapes(saved: dict, abstract_state: TrainState, directory, step: int) -> None:
  """Raises one-line ValueError naming the first parameter (params first) whose shape differs,
  or that only one side has."""
  expected = _shapes(abstract_state)
  order = lambda name: (not name.startswith("params/"), name)
  for name in sorted(set(saved) | set(expected), key=order):
    if expected.get(name, ()) is not None and saved.get(name) != expected.get(name):
      there = "absent" if name not in saved else str(saved[name])
      here = "absent" if name not in expected else str(expected[name])
      raise ValueError(f"{os.path.dirname(os.fspath(directory))} holds another model: {name} is "
                       f"{there} in its checkpoint (step {step}) but {here} in this config; "
                       "train in another --workdir, or with the config it was trained with")


def _set_aside(manager, failed: list[tuple[int, str]], restored: int) -> None:
  """Warns about each unreadable step and moves it to WORKDIR/checkpoints.unreadable/STEP, so
  that the steps trained again after `restored` can be saved under the same numbers."""
  import orbax.checkpoint as ocp
  directory = os.fspath(manager.directory)
  aside = os.path.join(os.path.dirname(directory), UNREADABLE_DIR)
  for step, reason in failed if jax.process_index() == 0 else ():
    log.warning("checkpoint step %d cannot be restored (%s); resuming from step %d (step %d "
                "moved to %s)", step, reason, restored, step, aside)
  if jax.process_index() == 0:
    os.makedirs(aside, exist_ok=True)
    for step, _ in failed:
      target, n = os.path.join(aside, str(step)), 1
      while os.path.exists(target):  # set aside before, then trained to this step again
        target, n = os.path.join(aside, f"{step}.{n}"), n + 1
      os.replace(os.path.join(directory, str(step)), target)
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes("paella_jax_unreadable_checkpoints_moved")
  manager.reload()
