"""paella-jax checkpoints -> the original PyTorch formats: the converters run backwards.

    to_torch("runs/tuned/model", "paella_v1.pt")     # the predictor's original state_dict
    python -m paella_jax.convert to-torch runs/tuned/model paella_v1.safetensors

The tensors get the original code's key names and layouts through the same key maps and
transforms the importers use (`convert/paella.py`, `convert/paella_v3.py`, `convert/vqgan.py`),
so a converted model exports to exactly the tensors it was converted from. OUT's suffix picks
the format:

  .pt .pth .bin   a flat state_dict (`torch.save`), for `load_state_dict(strict=True)`
  .ckpt           `{"state_dict": ...}`, the Lightning layout taming and ruDALL-E read
  .safetensors    a flat safetensors file (its metadata records where it came from)
  no suffix       a diffusers model directory (`from_pretrained`): a VQGAN with a
                  nearest-neighbour quantizer as `VQModel`, Paella v3's f4 VQGAN as
                  `PaellaVQModel`

Which weights: those the checkpoint holds (the trainer exports EMA or raw params, see
`config.export`), in their stored dtype (bfloat16 stays bfloat16) unless `upcast` asks for
float32. An existing OUT is replaced only with `overwrite`, and then only if it is a file or a
directory this exporter wrote.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import uuid
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from paella_jax import checkpoint, families
from paella_jax.convert import vqgan
from paella_jax.convert.torch_io import CheckpointMismatchError, check_state_dict
from paella_jax.encoders.vq import KIND as VQ_KIND
from paella_jax.models.vqgan import (PaellaVQ, attention_levels, init_params, vqgan_config,
                                     vqgan_from_config)

FILE_FORMATS = {".pt": "state_dict", ".pth": "state_dict", ".bin": "state_dict",
                ".ckpt": "lightning", ".safetensors": "safetensors"}
# Written into every exported diffusers directory: marks it as ours (for --overwrite) and
# records the source checkpoint.
EXPORT_RECORD = "paella_jax_export.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


# ----------------------------------------------------------------------------------------------
# Parameters -> PyTorch state dicts (numpy arrays, in the original's names and layouts)


def _check_params(params: Any, expected: Mapping[tuple[str, ...], tuple[int, ...]],
                  what: str) -> dict[tuple[str, ...], np.ndarray]:
  """The flattened params, after checking their paths and shapes against the model's."""
  flat = {k: np.asarray(v) for k, v in flatten_dict(params).items()}
  check_state_dict({"/".join(k): v for k, v in flat.items()},
                   {"/".join(k): v for k, v in expected.items()}, what)
  return flat


def _from_key_map(entries, flat: Mapping[tuple[str, ...], np.ndarray],
                  to_flax: Mapping[str, Callable], torch_shape: Mapping[str, Callable]
                  ) -> dict[str, np.ndarray]:
  """PyTorch tensors from Flax params through an importer's key map, (torch key, flax path,
  kind) entries, by running the importer's own `to_flax[kind](tensor, flax_shape)` on each
  tensor's element indices: that says which tensor element every Flax value came from, so any
  rearrangement it makes (transposes, flips, reshapes, one packed tensor split over several
  parameters) is undone exactly. Every element must come from exactly one parameter."""
  by_key: dict[str, list] = {}
  for torch_key, path, kind in entries:
    by_key.setdefault(torch_key, []).append((path, kind))
  state_dict = {}
  for torch_key, parts in by_key.items():
    tensor, covered = None, None
    for path, kind in parts:
      value = flat[path]
      shape = tuple(torch_shape[kind](value.shape))
      if tensor is None:
        tensor, covered = np.zeros(shape, value.dtype), np.zeros(math.prod(shape), np.int8)
      index = to_flax[kind](np.arange(tensor.size).reshape(shape), value.shape)
      index = np.asarray(index).reshape(-1)
      tensor.reshape(-1)[index] = value.reshape(-1)
      covered[index] += 1
    if not (covered == 1).all():
      raise CheckpointMismatchError(f"the key map does not give every element of {torch_key} "
                                    "exactly once")
    state_dict[torch_key] = tensor
  return state_dict


def predictor_state_dict(kind: str, config: Mapping[str, Any], params: Any
                         ) -> dict[str, np.ndarray]:
  """Token predictor params -> the original's state_dict, through the family's converter
  (`Family.converter`'s key_map; v3's q, k and v go back into MultiheadAttention's packed
  in_proj tensors)."""
  family = families.get(kind)
  model, convert = family.build_model(config), family.converter
  flat = _check_params(params, convert.flax_shapes(model),
                       f"{family.title} {family.model_class} {model.architecture()}")
  return _from_key_map(convert.key_map(model), flat, convert.TO_FLAX, convert.TORCH_SHAPE)


def vqgan_state_dict(config: Mapping[str, Any], params: Any) -> dict[str, np.ndarray]:
  """VQGAN params -> the state_dict of taming's VQGAN (ruDALL-E's GumbelVQ, taming's VQModel)
  or of Paella v3's f4 VQModel (`vqgan_f4.pt`).

  BatchNorm layers get `num_batches_tracked` = 0 (PyTorch keeps it; inference never reads it).
  """
  module = vqgan_from_config(config)
  shapes = jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0), module.factor))
  flat = _check_params(params, {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()},
                       f"{type(module).__name__} {config}")
  state_dict = {}
  for key, (path, kind, _) in vqgan.torch_layout(shapes).items():
    value = flat[path]
    key = vqgan.PAELLA_ORIGINAL_KEYS.get(key, key) if isinstance(module, PaellaVQ) else key
    state_dict[key] = (value.transpose(vqgan.TORCH_AXES[kind]) if kind in vqgan.TORCH_AXES
                       else value)
    if key.endswith(".running_mean"):
      state_dict[key[:-len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return state_dict


EXPORTERS = {**{kind: functools.partial(predictor_state_dict, kind) for kind in families.KINDS},
             VQ_KIND: vqgan_state_dict}


def _check_taming_file(config: Mapping[str, Any]) -> None:
  """Refuses a taming-layout file for a VQGAN that taming's code cannot build."""
  module = vqgan_from_config(config)
  if isinstance(module, PaellaVQ):
    return
  unlike = ([f"norm_groups={module.norm_groups}"] if module.norm_groups != 32 else []) + (
      [f"act={module.act!r}"] if module.act not in ("swish", "silu") else [])
  if unlike:
    raise ValueError(f"taming's Encoder/Decoder have GroupNorm(32) and swish; this VQGAN has "
                     f"{', '.join(unlike)}: write a diffusers directory (OUT without a suffix)")


# ----------------------------------------------------------------------------------------------
# diffusers directories


def _diffusers_vqgan(config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray]
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, state_dict) of the diffusers model class that holds this VQGAN."""
  module = vqgan_from_config(config)
  if isinstance(module, PaellaVQ):
    fields = {k: v for k, v in vqgan_config(module).items() if k != "architecture"}
    diffusers_names = {original: d for d, original in vqgan.PAELLA_ORIGINAL_KEYS.items()}
    return ({"_class_name": "PaellaVQModel",
             **{vqgan.PAELLA_CONFIG_NAMES.get(k, k): v for k, v in fields.items()}},
            {diffusers_names.get(k, k): v for k, v in state_dict.items()})
  if module.quantizer != "vq":
    raise ValueError(f"a VQGAN with the {module.quantizer!r} quantizer has no diffusers model "
                     "class (diffusers' VQModel quantizes by nearest neighbour); write a .ckpt, "
                     ".pt or .safetensors file with taming's keys instead")
  if module.ch_mult[0] != 1:
    raise ValueError(f"ch_mult {tuple(module.ch_mult)} does not start with 1: diffusers' VQModel "
                     "cannot hold this VQGAN; write a .ckpt, .pt or .safetensors file instead")
  levels = len(module.ch_mult)
  attention = attention_levels(module.resolution, levels, module.attn_resolutions)
  kind = lambda i, plain: ("Attn" if i in attention else "") + plain
  diffusers_config = {
      "_class_name": "VQModel", "in_channels": module.in_channels,
      "out_channels": module.out_channels,
      "down_block_types": [kind(i, "DownEncoderBlock2D") for i in range(levels)],
      "up_block_types": [kind(i, "UpDecoderBlock2D") for i in reversed(range(levels))],
      "block_out_channels": [module.ch * m for m in module.ch_mult],
      "layers_per_block": module.num_res_blocks, "act_fn": module.act,
      "latent_channels": module.z_channels, "vq_embed_dim": module.embed_dim,
      "num_vq_embeddings": module.n_embed, "norm_num_groups": module.norm_groups,
      "sample_size": module.resolution, "mid_block_add_attention": module.mid_attention,
      "norm_type": "group"}
  renamed = {}
  for key, value in state_dict.items():
    if vqgan.ATTENTION_PROJECTION.search(key):
      value = value[:, :, 0, 0]  # taming's 1x1 convolutions are Linear layers in diffusers
    renamed[vqgan.diffusers_key(key, levels)] = value
  return diffusers_config, renamed


# ----------------------------------------------------------------------------------------------
# Writing


def _torch_tensors(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  import torch
  out = {}
  for key, value in state_dict.items():
    value = np.asarray(value, order="C")  # (torch needs positive strides)
    if value.dtype.name == "bfloat16":  # numpy has no bfloat16 of its own: move the bits
      out[key] = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    else:
      out[key] = torch.from_numpy(value)
  return out


def _safetensors(path: str, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
  from safetensors.torch import save_file
  save_file(dict(tensors), path, metadata={"format": "pt", **metadata})


def _out_format(out: str) -> str:
  suffix = os.path.splitext(out)[1].lower()
  if suffix in FILE_FORMATS:
    return FILE_FORMATS[suffix]
  if suffix:
    raise ValueError(f"unknown output suffix {suffix!r} in {out}: use one of "
                     f"{', '.join(FILE_FORMATS)}, or no suffix for a diffusers directory")
  return "diffusers"


def _check_out(out: str, fmt: str, overwrite: bool) -> None:
  """Refuses an OUT whose parent is missing, or that exists (unless overwrite allows it)."""
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"the folder to write {os.path.basename(out)} into does not exist: "
                            f"{parent}")
  if not os.path.lexists(out):
    return
  if not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
  if fmt == "diffusers":
    if not os.path.isfile(os.path.join(out, EXPORT_RECORD)):
      raise FileExistsError(f"{out} exists and is not a directory written by this exporter (no "
                            f"{EXPORT_RECORD}); --overwrite replaces only those")
  elif not os.path.isfile(out):
    raise FileExistsError(f"{out} exists and is not a file; --overwrite replaces only a file")


def _is_float(dtype: np.dtype) -> bool:
  return dtype.kind == "f" or dtype.name == "bfloat16"


def _exporter(kind: str, checkpoint_dir: str) -> Callable:
  if kind not in EXPORTERS:
    raise ValueError(f"{checkpoint_dir} holds a {kind!r} model, which has no PyTorch export; "
                     f"to-torch exports {', '.join(EXPORTERS)}")
  return EXPORTERS[kind]


def torch_state_dict(checkpoint_dir: str | os.PathLike, upcast: bool = False
                     ) -> dict[str, np.ndarray]:
  """The model of a paella-jax checkpoint as a state_dict in the original's keys and layouts,
  as numpy arrays; bfloat16 params stay bfloat16 (ml_dtypes arrays) unless `upcast`.

  Raises ValueError for a kind that has no PyTorch export.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  export = _exporter(checkpoint.read_model_description(checkpoint_dir)["kind"], checkpoint_dir)
  _, config, params = checkpoint.load_model(checkpoint_dir)
  state_dict = export(config, params)
  if upcast:
    state_dict = {k: v.astype(np.float32) if _is_float(v.dtype) else v
                  for k, v in state_dict.items()}
  return state_dict


def _record(checkpoint_dir: str, desc: Mapping[str, Any], upcast: bool) -> dict[str, str]:
  """Where an export came from: source checkpoint, kind, weights (ema/params) and dtype."""
  meta = desc["meta"]
  return {"source": os.path.abspath(checkpoint_dir), "kind": desc["kind"],
          "weights": str(meta.get("weights", "params")),
          "dtype": "float32" if upcast else str(meta.get("dtype", "float32"))}


def to_torch(checkpoint_dir: str | os.PathLike, out: str | os.PathLike, upcast: bool = False,
             overwrite: bool = False) -> str:
  """Writes the model of a paella-jax checkpoint in the original PyTorch format OUT's suffix
  names (see the module docstring); returns OUT's absolute path.

  Raises ValueError for an unknown kind or suffix (or a VQGAN diffusers cannot hold),
  FileNotFoundError when OUT's folder is missing, FileExistsError when OUT exists and
  `overwrite` is off or OUT is not something this exporter replaces.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  out = os.path.abspath(os.fspath(out))
  fmt = _out_format(out)
  _check_out(out, fmt, overwrite)
  desc = checkpoint.read_model_description(checkpoint_dir)
  kind = desc["kind"]
  _exporter(kind, checkpoint_dir)
  if fmt == "diffusers" and kind != VQ_KIND:
    raise ValueError(f"a {kind!r} model has no diffusers format; give OUT one of the suffixes "
                     f"{', '.join(FILE_FORMATS)}")
  if fmt != "diffusers" and kind == VQ_KIND:
    _check_taming_file(desc["config"])
  state_dict = torch_state_dict(checkpoint_dir, upcast)
  record = _record(checkpoint_dir, desc, upcast)
  tmp = f"{out}.tmp.{uuid.uuid4().hex[:8]}"
  try:
    if fmt == "diffusers":
      diffusers_config, state_dict = _diffusers_vqgan(desc["config"], state_dict)
      os.makedirs(tmp)
      with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(diffusers_config, f, indent=2)
      _safetensors(os.path.join(tmp, DIFFUSERS_WEIGHTS), _torch_tensors(state_dict), record)
      with open(os.path.join(tmp, EXPORT_RECORD), "w") as f:
        json.dump(record, f, indent=2)
      checkpoint.replace_directory(tmp, out)  # out: absent or an export of ours (checked above)
    else:
      if fmt == "safetensors":
        _safetensors(tmp, _torch_tensors(state_dict), record)
      else:
        import torch
        tensors = _torch_tensors(state_dict)
        torch.save({"state_dict": tensors} if fmt == "lightning" else tensors, tmp)
      os.replace(tmp, out)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
    elif os.path.lexists(tmp):
      os.remove(tmp)
  return out


# ----------------------------------------------------------------------------------------------
# Command line


def write_checkpoint(*, source: str, out: str, upcast: bool = False,
                     overwrite: bool = False) -> str:
  """Exports the paella-jax checkpoint `source` to `out` (paella-convert to-torch's arguments
  as keywords); returns a one-line summary."""
  out = to_torch(source, out, upcast=upcast, overwrite=overwrite)
  record = _record(source, checkpoint.read_model_description(source), upcast)
  return (f"wrote the {record['kind']} model of {source} ({record['weights']} weights, "
          f"{record['dtype']}) to {out}")
