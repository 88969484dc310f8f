"""LoRA adapters of the token predictors: small files of their own, applied by merging.

    pipe = Pipeline.from_checkpoint("ckpts/paella_v1", lora=[("fox.safetensors", 0.8)])
    paella-sample --checkpoint ckpts/paella_v1 --lora fox.safetensors:0.8 --prompt "a fox"
    paella-convert merge-lora ckpts/paella_v1 fox.safetensors ckpts/paella_v1_fox

An adapter adds to a targeted layer's kernel K (contracted axes first, outputs last, as every
Dense, DenseGeneral and Conv kernel of ours) the low-rank product A B scaled by alpha / rank:
A holds K's input side and the rank r, B (r, outputs). The model with adapters runs through
qwix (Google's JAX quantization and LoRA library: it intercepts the layers' dot products and
convolutions, so the models need no LoRA code of their own; `lora_model`), which names the
factors `kernel_lora_a` and `kernel_lora_b` beside each kernel; for sampling, adapters are merged
into the kernels (`merge`), so the sampler runs the plain model at its own speed. Which layers a
family adapts by default is `Family.lora_targets` (v1: the blocks' 1x1 channel mixers and their
conditioning mappers; v3: the attention projections and the blocks' linear layers; never the
depthwise convolutions, whose low-rank update would not stay depthwise).

An adapter file is safetensors: one tensor per factor, named by its parameter path, and in its
metadata the format, the model family, rank, alpha, the target pattern and the id of the base
weights it was trained on (`checkpoint.checkpoint_id`), so an adapter loaded onto another base
is refused in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping, Sequence

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

FORMAT = "paella-jax-lora/1"
FACTORS = ("kernel_lora_a", "kernel_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """rank r >= 1; alpha: the update is scaled by alpha / r; targets: a regex matched in full
  against a layer's module path ("down_1_block_2/query"), None for the family's default;
  dropout on the adapters' input while training, in [0, 1)."""
  rank: int = 8
  alpha: float = 8.0
  targets: str | None = None
  dropout: float = 0.0

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout!r}")

  def for_model(self, model) -> LoraSpec:
    """The spec with the model family's default targets filled in."""
    from paella_jax import families
    return self if self.targets else dataclasses.replace(
        self, targets=families.of_model(model).lora_targets)


def lora_model(model, spec: LoraSpec):
  """The token predictor with adapters on the spec's target layers (a qwix-wrapped copy of
  `model`): its params hold `kernel_lora_a`/`kernel_lora_b` beside each targeted kernel, with
  A He-uniform and B zero at init, so it starts as the base model."""
  import qwix
  spec = spec.for_model(model)
  return qwix.apply_lora_to_model(model, qwix.LoraProvider(
      module_path=spec.targets, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout))


def is_factor(path: Sequence[str]) -> bool:
  return path[-1] in FACTORS


def adapters_of(params) -> dict[str, np.ndarray]:
  """The adapter factors of a params tree, by "/"-joined path."""
  return {"/".join(path): np.asarray(value) for path, value in flatten_dict(params).items()
          if is_factor(path)}


def merge(params, adapters: Mapping[str, np.ndarray], alpha: float, rank: int,
          scale: float = 1.0):
  """`params` (a base tree, which may also hold the factors) with each adapted kernel replaced
  by K + scale * alpha / rank * (A B reshaped to K), and no factor left. Float32 arithmetic,
  the kernel's dtype kept."""
  flat = {path: value for path, value in flatten_dict(params).items() if not is_factor(path)}
  kernels = {key.rsplit("/", 1)[0] for key in adapters}
  for layer in sorted(kernels):
    path = (*layer.split("/"), "kernel")
    if path not in flat:
      raise ValueError(f"the adapter has factors for {layer}, which has no kernel in this model")
    kernel = np.asarray(flat[path])
    a, b = (np.asarray(adapters[f"{layer}/{name}"], np.float32) for name in FACTORS)
    if a.shape[-1] != rank or b.shape[0] != rank or (
        a.size // rank * b.shape[1] != kernel.size):
      raise ValueError(f"the adapter's factors of {layer} ({a.shape}, {b.shape}) do not fit its "
                       f"kernel {kernel.shape} at rank {rank}")
    delta = (a.reshape(-1, rank) @ b).reshape(kernel.shape) * (scale * alpha / rank)
    flat[path] = (kernel.astype(np.float32) + delta).astype(kernel.dtype)
  return unflatten_dict(flat)


def save_adapters(path: str, adapters: Mapping[str, np.ndarray], *, kind: str, spec: LoraSpec,
                  base_id: str) -> str:
  """Writes an adapter file (safetensors, written to a temporary name then renamed) and
  returns its path."""
  from safetensors.numpy import save_file
  if not adapters:
    raise ValueError("no adapter factors to save: the target pattern matched no layer")
  metadata = {"format": FORMAT, "kind": kind, "rank": str(spec.rank), "alpha": repr(spec.alpha),
              "targets": spec.targets or "", "base_id": base_id}
  temporary = f"{path}.tmp{os.getpid()}"
  save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in adapters.items()},
            temporary, metadata=metadata)
  os.replace(temporary, path)
  return path


@dataclasses.dataclass(frozen=True)
class Adapter:
  """An adapter file read back: its factors, metadata and sha256 (recorded in sidecars)."""
  path: str
  factors: dict[str, np.ndarray]
  kind: str
  rank: int
  alpha: float
  base_id: str
  sha256: str


def load_adapter(path: str) -> Adapter:
  """Reads an adapter file; ValueError naming it when it is not one."""
  from safetensors import SafetensorError, safe_open
  from safetensors.numpy import load_file
  if not os.path.isfile(path):
    raise FileNotFoundError(f"LoRA adapter not found: {path}")
  try:
    with safe_open(path, "np") as f:
      metadata = f.metadata() or {}
    factors = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"{path} is not a LoRA adapter file (safetensors): {e}") from None
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{path} is not a paella-jax LoRA adapter (format "
                     f"{metadata.get('format')!r}, expected {FORMAT!r})")
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
  return Adapter(os.path.abspath(path), factors, metadata["kind"], int(metadata["rank"]),
                 float(metadata["alpha"]), metadata["base_id"], digest)


def apply_adapters(params, loras: Sequence[tuple[str, float]], *, kind: str, base_id: str
                   ) -> tuple[Any, list[dict]]:
  """`params` with each (adapter file, scale) merged in, in order; and what sidecars record of
  them ({"path", "sha256", "scale"}). An adapter of another family or trained on other base
  weights is refused (ValueError)."""
  records = []
  for path, scale in loras:
    adapter = load_adapter(path)
    if adapter.kind != kind:
      raise ValueError(f"{path} adapts a {adapter.kind} model, this is a {kind} one")
    if adapter.base_id != base_id:
      raise ValueError(f"{path} was trained on other base weights (id {adapter.base_id}), this "
                       f"checkpoint's are {base_id}: load it onto the model it was trained from")
    try:
      params = merge(params, adapter.factors, adapter.alpha, adapter.rank, scale)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None
    records.append({"path": adapter.path, "sha256": adapter.sha256, "scale": float(scale)})
  return params, records


def parse_lora(text: str) -> tuple[str, float]:
  """"PATH" or "PATH:SCALE" (the scale a finite number, 1 when absent)."""
  path, sep, scale = text.rpartition(":")
  if not sep or os.path.sep in scale:
    return text, 1.0
  try:
    value = float(scale)
  except ValueError:
    return text, 1.0  # a path with a colon
  if not np.isfinite(value):
    raise ValueError(f"--lora {text}: the scale must be a finite number")
  return path, value


def random_adapters(model, spec: LoraSpec, seed: int = 0, b_scale: float = 0.0
                    ) -> dict[str, np.ndarray]:
  """Freshly initialised factors of `model` under `spec`, from shapes only: A He-uniform and B
  zero, as training starts; `b_scale` > 0 draws B from N(0, b_scale^2) too (tests, examples)."""
  from paella_jax import families
  shapes = families.of_model(model).converter.flax_shapes(lora_model(model, spec))
  out, rng = {}, np.random.default_rng(seed)
  for path, shape in sorted(shapes.items()):
    if path[-1] == FACTORS[0]:
      bound = np.sqrt(6.0 / int(np.prod(shape[:-1])))
      out["/".join(path)] = rng.uniform(-bound, bound, shape).astype(np.float32)
    elif path[-1] == FACTORS[1]:
      out["/".join(path)] = rng.normal(0.0, b_scale, shape).astype(np.float32)
  return out


FROM_HUB = False  # paella-convert merge-lora reads local files only


def write_checkpoint(*, base: str, adapter: str, out_dir: str, overwrite: bool = False) -> str:
  """paella-convert merge-lora: the base model with the adapter (PATH[:SCALE]) merged in, as a
  plain checkpoint (the encoders the base records, recorded relative to `out_dir`); returns a
  one-line summary."""
  from paella_jax import checkpoint, families
  description = checkpoint.read_model_description(base)
  family = families.get(description["kind"])
  model, params = family.load_checkpoint(base)
  path, scale = parse_lora(adapter)
  merged, records = apply_adapters(params, [(path, scale)], kind=family.kind,
                                   base_id=checkpoint.checkpoint_id(description))
  meta = dict(description.get("meta", {}))
  for key in [k for k in meta if k.endswith("_checkpoint")]:
    recorded = checkpoint.recorded_path(base, meta, key)
    meta[key] = os.path.relpath(os.path.abspath(recorded), os.path.abspath(out_dir))
  meta["lora"] = [dict(r, base=os.path.abspath(base)) for r in records]
  out = checkpoint.save_model(out_dir, merged, family.kind, model.architecture(), meta=meta,
                              overwrite=overwrite)
  return f"merged {path} (scale {scale:g}) into {base} -> {out}"
