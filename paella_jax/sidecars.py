"""Run records and sidecars: what regenerates a sampled image bit for bit.

A run record (`run_record`) holds the request (`paella_jax.request`, its inputs as absolute
paths), every sampler setting used, the sampler version, the model family, and the checkpoint
directories with the model's id (a digest of its weights and description), the LoRA adapters
merged into it and the weights' quantization. paella-sample writes
it as codes.json and, with each image's index and label, as the image's JSON sidecar; the server
returns the same sidecars. `load_replay` reads one back as the checkpoints and the request (its
settings pinned to the recorded ones), refusing a sidecar of another sampler version or of a
checkpoint that changed. Sidecars written before requests were recorded (an "args" entry of
paella-sample's arguments) are read too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from paella_jax import quantize as quantization
from paella_jax import request
from paella_jax.sampler_settings import OFF, SamplerSettings

# The arguments of sidecars that recorded paella-sample's command line, as request fields.
_LEGACY_NAMES = {"prompt": "prompts", "batch_size": "num_images", "label_map": "labels"}
_LEGACY_SKIP = ("command", "checkpoint", "clip", "vqgan", "byt5") + tuple(
    f.name for f in dataclasses.fields(SamplerSettings))


def run_record(pipe, req: request.Request, settings: SamplerSettings) -> dict[str, Any]:
  """What a run's codes.json and every sidecar record: enough to replay it exactly. `pipe` is
  the `Pipeline` that sampled `req` with `settings`."""
  from paella_jax.sampling import SAMPLER_VERSION
  return dict(command=req.MODE, request=req.to_record(), sampler=settings.to_dict(),
              sampler_version=SAMPLER_VERSION, kind=pipe.kind, checkpoint=pipe.directory,
              checkpoint_id=pipe.model_id, clip_checkpoint=pipe.clip_dir,
              vqgan_checkpoint=pipe.vqgan_dir, byt5_checkpoint=pipe.byt5_dir,
              lora=pipe.adapters, quantize=pipe.quantize)


def image_sidecar(record: Mapping[str, Any], index: int, label: str) -> dict[str, Any]:
  """The sidecar of image `index` of a run."""
  return dict(record, index=index, label=label)


@dataclasses.dataclass(frozen=True)
class Replay:
  """A sidecar read back: the checkpoint directories, the request to sample again, the LoRA
  adapters merged into the model ({"path", "sha256", "scale"}; the files must be unchanged) and
  the weights' quantization (None: the checkpoints' own dtypes)."""
  checkpoint: str
  clip: str | None
  vqgan: str | None
  byt5: str | None
  request: request.Request
  lora: tuple = ()
  quantize: str | None = None

  @property
  def adapters(self) -> list[tuple[str, float]]:
    return [(a["path"], a["scale"]) for a in self.lora]


def load_replay(path: str) -> Replay:
  """The replay of a sidecar (or codes.json); ValueError when it cannot regenerate its image
  exactly (another sampler version, a changed checkpoint) or is not a sidecar."""
  from paella_jax.checkpoint import checkpoint_id
  from paella_jax.sampling import SAMPLER_VERSION
  with open(path) as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not a sidecar: not JSON ({e})") from None
  if not isinstance(record, dict) or "sampler" not in record or not (
      "request" in record or "args" in record):
    raise ValueError(f"{path} is not a sidecar of paella-sample or paella-serve")
  version = record.get("sampler_version", 1)  # sidecars before the version was recorded: 1
  if version != SAMPLER_VERSION:
    raise ValueError(f"{path} was made by sampler version {version}; this is version "
                     f"{SAMPLER_VERSION}, which draws other codes from the same seed, so it cannot "
                     "regenerate the image exactly (rerun the command to sample anew)")
  try:
    replay = _from_record(record) if "request" in record else _from_legacy(record)
    SamplerSettings.for_family(record.get("kind", "paella_v1"), replay.request.MODE
                               ).with_overrides(**replay.request.settings)  # checked now
    for name in ("checkpoint", "clip", "vqgan", "byt5"):
      value = getattr(replay, name)
      if not (isinstance(value, str) or (value is None and name != "checkpoint")):
        raise ValueError(f"its {name} must be a path, got {value!r:.80}")
  except KeyError as e:
    raise ValueError(f"{path} does not describe a request this version can replay: it lacks "
                     f"{e}") from None
  except (AttributeError, TypeError, ValueError) as e:
    raise ValueError(f"{path} does not describe a request this version can replay: "
                     f"{e!s:.200}") from None
  if checkpoint_id(replay.checkpoint) != record.get("checkpoint_id"):
    raise ValueError(f"{replay.checkpoint} is not the checkpoint that made {path} "
                     "(its weights or description changed)")
  return replay


def _pinned(record: Mapping[str, Any]) -> dict[str, Any]:
  """The recorded settings as overrides: replayed whatever the defaults are now."""
  return {k: OFF if v is None else v for k, v in record["sampler"].items()}


def _from_record(record: Mapping[str, Any]) -> Replay:
  req = request.from_record(record["request"])
  lora = tuple(record.get("lora") or ())
  for adapter in lora:
    if not (isinstance(adapter, dict) and isinstance(adapter.get("path"), str)
            and isinstance(adapter.get("scale"), (int, float))):
      raise ValueError(f"its lora entries must be {{path, sha256, scale}}, got {adapter!r:.80}")
  return Replay(record["checkpoint"], record.get("clip_checkpoint"),
                record.get("vqgan_checkpoint"), record.get("byt5_checkpoint"),
                dataclasses.replace(req, settings=_pinned(record)), lora,
                quantization.check(record.get("quantize")))


def _from_legacy(record: Mapping[str, Any]) -> Replay:
  """A sidecar that recorded paella-sample's arguments ("command", "args")."""
  args = record["args"]
  cls = request.REQUESTS[record["command"]]
  names = {f.name for f in dataclasses.fields(cls)}
  fields = {_LEGACY_NAMES.get(k, k): v for k, v in args.items() if k not in _LEGACY_SKIP}
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            if k in names and v is not None}
  if cls.MODE == "generate" and not fields.get("prompts"):
    fields.pop("prompts", None)  # generation without prompts: embeddings or unconditional
  return Replay(args["checkpoint"], args.get("clip"), args.get("vqgan"), args.get("byt5"),
                cls(**fields, settings=_pinned(record)))


def write_run(out: str, result, record: Mapping[str, Any], columns: int) -> None:
  """Writes a run into the folder `out`: codes.npy, codes.json (the run record) and, with
  images, NNNN.png with its sidecar NNNN.json per image, grid.png (`columns` images per row)
  and, for interpolation, interpolation.gif (one image per frame). `result` is a
  `pipeline.Result`."""
  from paella_jax.images import make_grid, save_gif, save_png
  np.save(os.path.join(out, "codes.npy"), result.codes)
  with open(os.path.join(out, "codes.json"), "w") as f:
    json.dump(record, f, indent=2)
  if result.images is None:
    print(f"wrote {result.codes.shape} codes to {out}/codes.npy (no VQGAN given: no images)")
    return
  for i, image in enumerate(result.images):
    save_png(os.path.join(out, f"{i:04d}.png"), image)
    with open(os.path.join(out, f"{i:04d}.json"), "w") as f:
      json.dump(image_sidecar(record, i, result.labels[i]), f, indent=2)
  save_png(os.path.join(out, "grid.png"), make_grid(result.images, columns=columns))
  if record["command"] == "interpolate":
    save_gif(os.path.join(out, "interpolation.gif"), result.images[::columns])
  print(f"wrote {len(result.images)} images, grid.png and sidecars to {out}")
