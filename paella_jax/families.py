"""What differs between Paella v1 and v3, in one place: one `Family` entry per model kind.

    family = families.get("paella_v3")          # by model.json's / a config's `kind`
    family = families.of_model(model)           # by the module (DenoiseUNet or PaellaV3)
    model = family.build_model(config.model)
    family.sampler_defaults                     # model.json's "sampling" record
    conditioning = family.conditioning(pipe)    # prompts/images -> the model's conditioning rows

An entry holds the facts (model module, sampler defaults, latent size, text encoders, records
format) and the conditioning of a pipeline: how prompts and images become the model's
conditioning rows, what guidance's other half is, how editing noises codes and how
interpolation mixes prompts. Arithmetic that belongs to one layer stays there, in a table keyed
by `Family.kind`: the sampler's timesteps, renoising and guidance (`paella_jax.sampling`), the
training losses (`training/step.py`) and batch fields (`training/partition.py`).

Conditioning rows (`Conditioning`): v1 an array, (N, C) pooled or (N, h', w', C) spatial; v3 a
dict of arrays with N rows each: byt5 (N, L, D), byt5_mask (N, L) bool, clip (N, C), clip_image
(N, C), any absent. The row helpers below treat both alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Conditioning = Any


# --------------------------------------------------------------------------- conditioning rows

def map_rows(fn: Callable[[np.ndarray], np.ndarray], cond: Conditioning) -> Conditioning:
  """`fn` applied to a conditioning array, or to each array of a conditioning dict."""
  return {k: fn(v) for k, v in cond.items()} if isinstance(cond, Mapping) else fn(cond)


def num_rows(cond: Conditioning) -> int:
  return len(next(iter(cond.values())) if isinstance(cond, Mapping) else cond)


def repeat_rows(cond: Conditioning, count: int) -> Conditioning:
  """Each row `count` times, in place (row 0 x count, then row 1 ...)."""
  return map_rows(lambda a: np.repeat(a, count, 0), cond)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """x (N, ...) with its last row repeated up to `size` rows (N <= size)."""
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)])


def concat_rows(conds: Sequence[Conditioning]) -> Conditioning:
  """The rows of several conditionings of one `row_signature`, one after the other."""
  if isinstance(conds[0], Mapping):
    return {k: np.concatenate([c[k] for c in conds]) for k in conds[0]}
  return np.concatenate(conds)


def row_signature(cond: Conditioning | None) -> tuple:
  """What conditionings must share to be concatenated: their entries and per-row shapes."""
  if cond is None:
    return ()
  if isinstance(cond, Mapping):
    return tuple(sorted((k, np.shape(v)[1:]) for k, v in cond.items()))
  return (np.shape(cond)[1:],)


def as_rows(cond: Conditioning) -> Conditioning:
  """Host arrays of the sampler's dtypes: float32, a byt5_mask bool; None entries dropped."""
  if isinstance(cond, Mapping):
    return {k: np.asarray(v, bool if k == "byt5_mask" else np.float32)
            for k, v in cond.items() if v is not None}
  return np.asarray(cond, np.float32)


# --------------------------------------------------------------------------- per-family conditioning

class V1Conditioning:
  """v1: CLIP text embeddings (N, c_clip), pooled or spatial; the sampler guides against zeros.

  `pipe` is a `paella_jax.pipeline.Pipeline` (its encoders are loaded on first use)."""

  def __init__(self, pipe):
    self.pipe = pipe

  @property
  def clip_width(self) -> int:
    return self.pipe.model.c_clip

  def encode(self, prompts: list[str]) -> np.ndarray:
    return self.pipe.text_encoder().encode_text(prompts)

  def unconditional(self, n: int) -> np.ndarray:
    return np.zeros((n, self.clip_width), np.float32)

  def uncond(self, n: int, negative_prompt: str | None) -> None:
    if negative_prompt is not None:
      raise ValueError("a negative prompt needs a Paella v3 model: Paella v1 guides with zero "
                       "conditioning, not with a prompt")
    return None

  @staticmethod
  def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    from paella_jax.models.clip import preprocess_images
    return np.asarray(preprocess_images(images, size))

  def image_conditioning(self, emb: np.ndarray) -> np.ndarray:
    return emb

  def noise_for_edit(self, rng, codes: np.ndarray, start_step: int, steps: int) -> np.ndarray:
    """Codes noised to step `start_step`'s level: replaced with probability cos(pi r / 2),
    r = start_step / steps."""
    from paella_jax import editing
    return np.asarray(editing.noise_for_edit(rng, codes, start_step, steps,
                                             self.pipe.model.num_labels))

  def interpolation(self, prompts: list[str], frames: int, mode: str) -> np.ndarray:
    from paella_jax import editing
    return editing.interpolation_path(self.encode(prompts), frames, mode)


class V3Conditioning:
  """v3: dict(byt5, byt5_mask, clip) of a prompt (ByT5 states, CLIP text embedding), with
  `clip_image` for variations; guidance's other half is the empty prompt's (or a negative one's)."""

  def __init__(self, pipe):
    self.pipe, self._empty = pipe, None

  @property
  def clip_width(self) -> int:
    return self.pipe.model.clip_embd

  def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
    hidden, mask = self.pipe.byt5_encoder().encode(prompts)
    return dict(byt5=hidden, byt5_mask=mask, clip=self.pipe.text_encoder().encode_text(prompts))

  def empty(self) -> dict[str, np.ndarray]:
    """The conditioning of "" (one row), encoded once."""
    if self._empty is None:
      self._empty = self.encode([""])
    return self._empty

  def unconditional(self, n: int) -> dict[str, np.ndarray]:
    return repeat_rows(self.empty(), n)

  def uncond(self, n: int, negative_prompt: str | None) -> dict[str, np.ndarray]:
    negative = self.empty() if negative_prompt is None else self.encode([negative_prompt])
    return repeat_rows(negative, n)

  @staticmethod
  def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    from paella_jax.encoders.clip import preprocess_v3
    return np.asarray(preprocess_v3(images, size))

  def image_conditioning(self, emb: np.ndarray) -> dict[str, np.ndarray]:
    """The empty prompt's conditioning with the image embedding: guidance then pulls towards
    the image alone."""
    return dict(self.empty(), clip_image=emb)

  def noise_for_edit(self, rng, codes: np.ndarray, start_step: int, steps: int) -> np.ndarray:
    """Codes noised to step `start_step`'s level: replaced with probability t = 1 - start_step
    / steps (v3's linear schedule)."""
    from paella_jax.noise import replace_tokens
    level = np.full((len(codes),), 1.0 - start_step / steps, np.float32)
    return np.asarray(replace_tokens(rng, np.asarray(codes, np.int32), level,
                                     self.pipe.model.num_labels)[0])

  def interpolation(self, prompts: list[str], frames: int, mode: str) -> dict[str, np.ndarray]:
    """Frames along the path through the prompts' conditionings: the ByT5 states (padded to the
    longest prompt with zeros; a frame's mask keeps the tokens of the prompts it mixes) and the
    CLIP embeddings. The first and last frames are the first and last prompts."""
    from paella_jax import editing
    cond = self.encode(prompts)
    mask = cond["byt5_mask"]
    byt5 = np.where(mask[..., None], cond["byt5"], 0.0).astype(np.float32)
    path = editing.interpolation_path(byt5.reshape(len(prompts), -1), frames, mode)
    return dict(byt5=path.reshape(frames, *byt5.shape[1:]),
                byt5_mask=editing.interpolation_path(mask.astype(np.float32), frames) > 0,
                clip=editing.interpolation_path(cond["clip"], frames, mode))


# --------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Family:
  """One model family.

  kind: model.json's and a config's `kind`. title: its name in messages.
  model_module, model_class: where the token predictor lives (`build_model(config)` there).
  sampler_defaults: the sampling record converters write into model.json (see
    `paella_jax.sampler_settings`); per-mode entries under "modes".
  latent_shape: (h, w) of the released model's token maps.
  spatial: takes spatial conditioning (one embedding per latent position; `multi`).
  text_encoders: the encoders a prompt goes through, in model.json's "*_checkpoint" names.
  records_format: the format tag of its pre-encoded records (`paella_jax.data.records`).
  lora_targets: the layers LoRA adapts by default, a regex matched in full against module paths
    (`paella_jax.lora`).
  converter_module: its PyTorch weight converter (`paella_jax.convert.torch_io` says what one
    holds; to-torch runs it backwards).
  conditioning: the pipeline's conditioning class (`V1Conditioning`, `V3Conditioning`).
  """
  kind: str
  title: str
  model_module: str
  model_class: str
  sampler_defaults: Mapping[str, Any]
  latent_shape: tuple[int, int]
  spatial: bool
  text_encoders: tuple[str, ...]
  records_format: str
  lora_targets: str
  converter_module: str
  conditioning: type

  @property
  def module(self):
    """The token predictor's module: `build_model(config)`, `init_params(model, rng, shape)`."""
    return importlib.import_module(self.model_module)

  @property
  def converter(self):
    return importlib.import_module(self.converter_module)

  @property
  def model_type(self) -> type:
    return getattr(self.module, self.model_class)

  def build_model(self, config):
    """The token predictor of a model config (`config.model` of a training config)."""
    return self.module.build_model(config)

  def load_checkpoint(self, directory: str):
    """(model, params as numpy) of an inference checkpoint of this family. ValueError naming
    the checkpoint when model.json's config builds no model of this family or its weights do
    not fit that model (an edited model.json)."""
    from flax.traverse_util import flatten_dict
    from paella_jax.checkpoint import MODEL_FILE, load_model
    from paella_jax.cli import one_line
    _, config, params = load_model(directory, expected_kind=self.kind)
    try:
      model = self.build_model(config)
      expected = self.converter.flax_shapes(model)
    except Exception as e:  # noqa: BLE001  any field of an edited config may break the build
      raise ValueError(f"{directory}: {MODEL_FILE}'s config does not describe a {self.title} "
                       f"model ({one_line(e):.200}); was it edited?") from None
    actual = {path: tuple(np.shape(value)) for path, value in flatten_dict(params).items()}
    differ = sorted(set(actual) ^ set(expected)) or sorted(
        path for path in expected if actual[path] != expected[path])
    if differ:
      path = differ[0]
      raise ValueError(
          f"{directory}: the weights do not fit {MODEL_FILE}'s config ({self.title} "
          f"{model.architecture()}): {'/'.join(path)} is {actual.get(path, 'missing')} in the "
          f"weights, {expected.get(path, 'absent')} in the model ({len(differ)} parameters "
          f"differ); was {MODEL_FILE} edited?")
    return model, params


PAELLA_V1 = Family(
    kind="paella_v1", title="Paella v1", model_module="paella_jax.models.paella",
    model_class="DenoiseUNet",
    # The paper's settings (8 steps; guidance 5 to generate, 4 to interpolate and outpaint, 6 to
    # inpaint and edit; structural editing runs 24 steps from step 8, renoise 'prev').
    sampler_defaults=dict(
        steps=8, cfg=5.0, typical_mass=0.2, typical_min_tokens=1, temperature=(1.0, 1.0),
        renoise_mode="start", start_step=0,
        modes=dict(inpaint=dict(cfg=6.0), outpaint=dict(cfg=4.0), interpolate=dict(cfg=4.0),
                   edit=dict(cfg=6.0, steps=24, start_step=8, renoise_mode="prev"))),
    latent_shape=(32, 32), spatial=True, text_encoders=("clip",),
    records_format="paella-jax-records/1",
    lora_targets=r".*/(mlp_in|mlp_out|cond_mapper)",
    converter_module="paella_jax.convert.paella", conditioning=V1Conditioning)

PAELLA_V3 = Family(
    kind="paella_v3", title="Paella v3", model_module="paella_jax.models.paella_v3",
    model_class="PaellaV3",
    # The release's sampler (src_distributed/utils.py::sample): 12 steps, guidance 8 throughout,
    # temperature 0.7 -> 0.3, no typical filtering. The release has no structural editing; ours
    # starts it at step 4 of 12 (noise level 2/3: each token replaced with probability 2/3).
    sampler_defaults=dict(
        steps=12, cfg=(8.0, 8.0), typical_mass=None, typical_min_tokens=1,
        temperature=(0.7, 0.3), renoise_mode="start", start_step=0,
        modes=dict(edit=dict(start_step=4))),
    latent_shape=(64, 64), spatial=False, text_encoders=("byt5", "clip"),
    records_format="paella-jax-records-v3/1",
    lora_targets=r".*/(query|key|value|out|kv_mapper|mapper|mlp_in|mlp_out)",
    converter_module="paella_jax.convert.paella_v3", conditioning=V3Conditioning)

FAMILIES = {family.kind: family for family in (PAELLA_V1, PAELLA_V3)}
KINDS = tuple(FAMILIES)


def get(kind: str) -> Family:
  """The family of a model.json's or config's `kind`; a one-line error for any other."""
  if kind not in FAMILIES:
    raise ValueError(f"unknown model kind {kind!r}; Paella models are one of {KINDS}")
  return FAMILIES[kind]


def of_config(config) -> Family:
  """The family a training config trains: its `kind`, Paella v1 when absent."""
  return get(config.get("kind", PAELLA_V1.kind))


def of_model(model) -> Family:
  """The family of a token predictor module."""
  for family in FAMILIES.values():
    if isinstance(model, family.model_type):
      return family
  raise TypeError(f"{type(model).__name__} is not a Paella token predictor: expected one of "
                  + ", ".join(f"{f.model_class} ({f.title})" for f in FAMILIES.values()))
