"""Inference checkpoints: a parameter tree (Orbax) plus a JSON description of the model.

Layout of a checkpoint directory written by `save_model`:
  OUT_DIR/model.json   {"kind": ..., "config": {...}, "meta": {...}}
  OUT_DIR/params/      an Orbax PyTree checkpoint of the parameters

Converters (`python -m paella_jax.convert ...`), the trainer's export and `sample.py` all use
this one format. A directory is written to a temporary sibling and renamed into place, so an
interrupted save never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np

MODEL_FILE = "model.json"
PARAMS_DIR = "params"


def save_model(out_dir: str | os.PathLike, params: Any, kind: str,
               config: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> str:
  """Writes `params` (any pytree of arrays) with its model description to `out_dir`."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} exists; pass overwrite=True (or --overwrite) to replace it")
  tmp_dir = out_dir + ".tmp"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  # Written by the calling process alone (host arrays), also inside a multi-process job.
  local = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=local),
                        multiprocessing_options=local) as ckptr:
    ckptr.save(os.path.join(tmp_dir, PARAMS_DIR), params)
  with open(os.path.join(tmp_dir, MODEL_FILE), "w") as f:
    json.dump({"kind": kind, "config": dict(config), "meta": dict(meta or {})}, f, indent=2)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp_dir, out_dir)
  return out_dir


def read_model_description(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
  """Returns {"kind", "config", "meta"} of a checkpoint directory, with clear errors."""
  ckpt_dir = os.fspath(ckpt_dir)
  path = os.path.join(ckpt_dir, MODEL_FILE)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"checkpoint directory not found: {ckpt_dir}")
  if not os.path.isfile(path):
    raise ValueError(f"{ckpt_dir} is not a paella-jax model checkpoint (no {MODEL_FILE}); "
                     "convert PyTorch weights first with `python -m paella_jax.convert`")
  with open(path) as f:
    return json.load(f)


def recorded_path(checkpoint: str | os.PathLike, meta: Mapping[str, Any], key: str) -> str | None:
  """The path `meta[key]` records (e.g. "clip_checkpoint"), resolved against the checkpoint
  directory when relative; None when nothing is recorded."""
  recorded = meta.get(key)
  return os.path.normpath(os.path.join(checkpoint, recorded)) if recorded else None


def load_model(ckpt_dir: str | os.PathLike, expected_kind: str | None = None
               ) -> tuple[str, dict[str, Any], Any]:
  """Reads a checkpoint written by `save_model`: returns (kind, config, params as numpy)."""
  import orbax.checkpoint as ocp
  desc = read_model_description(ckpt_dir)
  if expected_kind is not None and desc["kind"] != expected_kind:
    raise ValueError(f"{ckpt_dir} holds a {desc['kind']!r} model, expected {expected_kind!r}")
  with ocp.PyTreeCheckpointer() as ckptr:
    params = ckptr.restore(os.path.abspath(os.path.join(os.fspath(ckpt_dir), PARAMS_DIR)))
  return desc["kind"], desc["config"], params
