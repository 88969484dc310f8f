"""Inference checkpoints: a parameter tree (Orbax) plus a JSON description of the model.

Layout of a checkpoint directory written by `save_model`:
  OUT_DIR/model.json   {"kind": ..., "config": {...}, "meta": {...},
                        "weights_sha256": ..., "params_files": {path: bytes}}
  OUT_DIR/params/      an Orbax PyTree checkpoint of the parameters

Converters (`python -m paella_jax.convert ...`), the trainer's export and `sample.py` all use
this one format. A directory is written to a temporary sibling and renamed into place, so an
interrupted save never leaves a half-written checkpoint under the final name, and
`overwrite=True` replaces only a directory of this format, never other files.

"weights_sha256" is a content hash of the parameters (every leaf's name, dtype, shape and
bytes); `checkpoint_id` is its first 16 hex digits, so retrained, converted again or damaged
weights get another id. `load_model` checks the file sizes under params/ before reading and
the hash after, and names the checkpoint in a ValueError when either differs. A model.json
without a hash (written before it was recorded) loads unchecked; its id is then a hash of the
description, as before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import sys
import uuid
from typing import Any, Mapping

import jax
import numpy as np

MODEL_FILE = "model.json"
PARAMS_DIR = "params"
HASH_KEY = "weights_sha256"
FILES_KEY = "params_files"


def replace_directory(new: str, target: str) -> None:
  """Renames the finished directory `new` to `target`; an existing `target` is removed only
  after the new one is in place, so an interruption never loses both."""
  if os.path.lexists(target):
    old = f"{target}.old.{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)
  else:
    os.replace(new, target)


def save_model(out_dir: str | os.PathLike, params: Any, kind: str,
               config: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> str:
  """Writes `params` (any pytree of arrays) with its model description and weights hash to
  `out_dir`. An existing `out_dir` must be empty, or (with `overwrite`) a checkpoint of this
  format; anything else is refused with FileExistsError before a file is written."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(os.fspath(out_dir))
  _check_replaceable(out_dir, overwrite)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  tmp_dir = f"{out_dir}.tmp.{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp_dir)
  try:
    # Written by the calling process alone (host arrays), also inside a multi-process job.
    local = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                               active_processes={jax.process_index()})
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=local),
                          multiprocessing_options=local) as ckptr:
      ckptr.save(os.path.join(tmp_dir, PARAMS_DIR), params)
    description = {"kind": kind, "config": dict(config), "meta": dict(meta or {}),
                   HASH_KEY: weights_sha256(params),
                   FILES_KEY: _file_sizes(os.path.join(tmp_dir, PARAMS_DIR))}
    with open(os.path.join(tmp_dir, MODEL_FILE), "w") as f:
      json.dump(description, f, indent=2)
    replace_directory(tmp_dir, out_dir)  # out_dir: absent, empty, or ours (checked above)
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return out_dir


def _check_replaceable(out_dir: str, overwrite: bool) -> None:
  if not os.path.lexists(out_dir) or (os.path.isdir(out_dir) and not os.path.islink(out_dir)
                                      and not os.listdir(out_dir)):
    return
  if not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (or --overwrite) to replace it")
  if not is_checkpoint_dir(out_dir):
    raise FileExistsError(f"{out_dir} is not a paella-jax checkpoint (only {MODEL_FILE} and "
                          f"{PARAMS_DIR}/), so --overwrite does not replace it; nothing was "
                          "changed: choose another output directory")


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
  """Whether `path` is a directory holding exactly a model.json file and a params/ directory."""
  path = os.fspath(path)
  return (os.path.isdir(path) and not os.path.islink(path)
          and sorted(os.listdir(path)) == sorted([MODEL_FILE, PARAMS_DIR])
          and os.path.isfile(os.path.join(path, MODEL_FILE))
          and os.path.isdir(os.path.join(path, PARAMS_DIR)))


def tree_leaves_by_name(tree: Any) -> list[tuple[str, Any]]:
  """(name, leaf) of every leaf, names like "down_0_block_0/mlp_in/kernel", sorted by name.
  The names do not depend on the container types (a dict and a restored dataclass agree)."""
  def part(key) -> str:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)
  return sorted((("/".join(part(k) for k in path), leaf)
                 for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]),
                key=lambda named: named[0])


def weights_sha256(params: Any) -> str:
  """sha256 of a parameter tree: over each leaf's name, dtype, shape and the sha256 of its
  bytes (leaves hashed in parallel threads), in name order. Hex string of 64 digits."""
  named = tree_leaves_by_name(params)
  arrays = [np.ascontiguousarray(np.asarray(leaf)) for _, leaf in named]
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    digests = list(pool.map(lambda a: hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest(),
                            arrays))
  total = hashlib.sha256()
  for (name, _), array, digest in zip(named, arrays, digests):
    total.update(f"{name} {array.dtype.name} {list(array.shape)} {digest}\n".encode())
  return total.hexdigest()


def _file_sizes(directory: str) -> dict[str, int]:
  """{path relative to `directory`: size in bytes} of every file below it."""
  sizes = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      sizes[os.path.relpath(path, directory)] = os.path.getsize(path)
  return dict(sorted(sizes.items()))


def read_model_description(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
  """Returns {"kind", "config", "meta", ...} of a checkpoint directory, with clear errors."""
  ckpt_dir = os.fspath(ckpt_dir)
  path = os.path.join(ckpt_dir, MODEL_FILE)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(ckpt_dir.missing() if isinstance(ckpt_dir, RecordedPath)
                            else f"checkpoint directory not found: {ckpt_dir}")
  if not os.path.isfile(path):
    raise ValueError(f"{ckpt_dir} is not a paella-jax model checkpoint (no {MODEL_FILE}); "
                     "convert PyTorch weights first with `python -m paella_jax.convert`")
  with open(path) as f:
    try:
      description = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is damaged (not valid JSON: {e})") from None
  if not isinstance(description, dict) or "kind" not in description:
    raise ValueError(f"{path} is damaged (no model kind)")
  return description


def checkpoint_id(checkpoint: str | os.PathLike | Mapping[str, Any]) -> str:
  """A checkpoint's id (16 hex digits), from its directory or its `read_model_description`:
  the start of its weights hash, or for a checkpoint without one, of a hash of model.json."""
  description = (checkpoint if isinstance(checkpoint, Mapping)
                 else read_model_description(checkpoint))
  digest = description.get(HASH_KEY) or hashlib.sha256(
      json.dumps(description, sort_keys=True).encode()).hexdigest()
  return digest[:16]


class RecordedPath(str):
  """A path a model.json records (a `recorded_path`), which remembers where it comes from, so
  that reading a checkpoint there that is missing says so (`read_model_description`)."""
  checkpoint: str
  key: str
  recorded: str

  def missing(self) -> str:
    """Why this path is not there, and which flag gives another one."""
    flag = "--" + self.key.removesuffix("_checkpoint")
    where = ("relative to the model directory, which was moved or copied without it"
             if not os.path.isabs(self.recorded) else "which does not exist")
    return (f"{self} not found: {os.path.join(self.checkpoint, MODEL_FILE)} records its "
            f"{self.key} as {self.recorded!r}, {where}; pass the checkpoint with {flag} CKPT_DIR")


def recorded_path(checkpoint: str | os.PathLike, meta: Mapping[str, Any],
                  key: str) -> RecordedPath | None:
  """The path `meta[key]` records (e.g. "clip_checkpoint"), resolved against the checkpoint
  directory when relative; None when nothing is recorded."""
  recorded = meta.get(key)
  if not recorded:
    return None
  path = RecordedPath(os.path.normpath(os.path.join(checkpoint, recorded)))
  path.checkpoint, path.key, path.recorded = os.fspath(checkpoint), key, recorded
  return path


def load_model(ckpt_dir: str | os.PathLike, expected_kind: str | None = None
               ) -> tuple[str, dict[str, Any], Any]:
  """Reads a checkpoint written by `save_model`: returns (kind, config, params as numpy).

  Raises ValueError naming the checkpoint when a file under params/ is missing or has another
  size than when saved (truncated), when Orbax cannot read it, or when the weights do not
  match the recorded hash (flipped bits).
  """
  import orbax.checkpoint as ocp
  desc = read_model_description(ckpt_dir)
  if expected_kind is not None and desc["kind"] != expected_kind:
    raise ValueError(f"{ckpt_dir} holds a {desc['kind']!r} model, expected {expected_kind!r}")
  params_dir = os.path.abspath(os.path.join(os.fspath(ckpt_dir), PARAMS_DIR))
  if FILES_KEY in desc:
    _check_file_sizes(ckpt_dir, params_dir, desc[FILES_KEY])
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      params = ckptr.restore(params_dir)
  except Exception as e:  # noqa: BLE001  Orbax and TensorStore raise plain Exceptions
    quiet_failed_reads()
    raise ValueError(f"{ckpt_dir}: the weights under {PARAMS_DIR}/ cannot be read "
                     f"({error_reason(e)}); convert or export the model again") from e
  if HASH_KEY in desc:
    actual = weights_sha256(params)
    if actual != desc[HASH_KEY]:
      raise ValueError(f"{ckpt_dir}: the weights under {PARAMS_DIR}/ do not match the hash "
                       f"in {MODEL_FILE} ({desc[HASH_KEY][:16]}, now {actual[:16]}): they "
                       "changed or are damaged; convert or export the model again")
  return desc["kind"], desc["config"], params


def _check_file_sizes(ckpt_dir, params_dir: str, recorded: Mapping[str, int]) -> None:
  for name, size in recorded.items():
    path = os.path.join(params_dir, name)
    found = os.path.getsize(path) if os.path.isfile(path) else None
    if found != size:
      state = "is missing" if found is None else f"has {found} bytes, {size} when saved"
      raise ValueError(f"{ckpt_dir}: {PARAMS_DIR}/{name} {state}: the checkpoint is damaged "
                       "(truncated or incompletely copied?); copy, convert or export it again")


def error_reason(error: BaseException) -> str:
  """The root cause of a (chained) exception as one line of at most 200 characters."""
  while error.__cause__ is not None or (error.__context__ is not None
                                         and not error.__suppress_context__):
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def quiet_failed_reads() -> None:
  """Drops, for the rest of the process, the reports a failed Orbax read leaves behind: its
  abandoned read coroutines (each repeating the error with a TensorStore spec of 50 lines) and
  TensorStore callbacks into the closed event loop ("Event loop is closed"), which Python
  prints through sys.unraisablehook long after the error itself. Other reports pass."""
  previous = sys.unraisablehook
  if getattr(previous, "quiet_failed_reads", False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if ((isinstance(unraisable.exc_value, RuntimeError)
         and str(unraisable.exc_value) == "Event loop is closed")
        or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
      return
    previous(unraisable)
  hook.quiet_failed_reads = True
  sys.unraisablehook = hook
