"""What to sample, as a value: one frozen dataclass per mode, checked once when it is built.

    request = Inpaint(image="in.png", prompts=("a red hat",), box=(0, 64, 128, 192),
                      num_images=4, seed=1, settings={"cfg": 6.0})
    result = pipe.run(request)                 # paella_jax.pipeline.Pipeline
    record = request.to_record()               # JSON-ready; from_record(record) == request

Every entry point builds requests and hands them to the pipeline: paella-sample from its
arguments, paella-serve from a JSON body, paella-eval and the demo from their prompts; the
pipeline's mode methods (`pipe.inpaint(...)`) build one from their arguments. Sidecars record the
request (`paella_jax.sidecars`), so any image can be regenerated from it.

Inputs (`image`, inpainting's `mask`, multi's `labels`, generation's `embeddings`) are file
paths or arrays (images (H, W, 3) uint8 or float in [0, 1], or PIL images); a path is read when
the request is prepared. Only a request whose inputs are paths can be recorded. `settings`
overrides the checkpoint's sampler settings for the mode (`SamplerSettings` field names; "off"
turns cfg or typical filtering off).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from paella_jax.checks import FieldError, finite, integer, to_json
from paella_jax.sampler_settings import OFF, SamplerSettings
from paella_jax.tokenizer import check_prompts

# Seeds are 64-bit signed integers (jax.random.key's range).
SEED_RANGE = (-2 ** 63, 2 ** 63 - 1)
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplerSettings))


def _integers(value: Any, name: str, count: int, low: int = 0) -> tuple[int, ...] | None:
  """None, or `count` integers >= low as a tuple."""
  if value is None:
    return None
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != count:
    raise FieldError(f"{name} must be {count} integers, got {value!r:.80}", name)
  return tuple(integer(v, name, low) for v in value)


def prompt_tuple(value: Any, least: int = 1, name: str = "prompts") -> tuple[str, ...]:
  """A prompt or a sequence of at least `least` prompts, checked, as a tuple."""
  try:
    prompts = tuple(check_prompts(value))
  except (TypeError, ValueError) as e:
    raise FieldError(str(e), name) from None
  if len(prompts) < least:
    raise FieldError(f"give at least {least} prompt{'s' if least > 1 else ''}", name)
  return prompts


def _image(value: Any, name: str, required: bool = True):
  """A path (str) or an array-like image, as given."""
  if value is None:
    if required:
      raise FieldError(f"this mode needs an {name}", name)
    return None
  if isinstance(value, bytes) or (not isinstance(value, str) and not hasattr(value, "shape")
                                   and not hasattr(value, "mode")):
    raise FieldError(f"{name} must be a file path, an array or a PIL image, got "
                     f"{type(value).__name__}", name)
  return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise FieldError(f"{name} must be one of {choices}, got {value!r:.80}", name)
  return value


def _settings(value: Any) -> dict[str, Any]:
  """Sampler overrides: known names, tuples for lists, "off" only where it means something."""
  if not isinstance(value, Mapping):
    raise FieldError(f"settings must be a mapping of sampler settings, got "
                     f"{type(value).__name__}", "settings")
  unknown = sorted(set(value) - set(SETTING_NAMES))
  if unknown:
    raise FieldError(f"unknown sampler settings: {unknown}; known: {list(SETTING_NAMES)}",
                     unknown[0])
  out = {}
  for name, setting in value.items():
    if setting is None:
      continue
    if isinstance(setting, str) and setting == OFF and name not in ("cfg", "typical_mass"):
      raise FieldError(f"only cfg and typical_mass can be {OFF!r}, not {name}", name)
    out[name] = tuple(setting) if isinstance(setting, list) else setting
  return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
  """What every mode takes. num_images: images per prompt (per input, per frame), >= 1.
  seed: row i of the request draws from fold_in(key(seed), i) (see `sampling.row_keys`).
  negative_prompt: Paella v3 guides away from it instead of the empty prompt (v1 refuses it).
  settings: sampler overrides (see the module docstring)."""
  MODE: ClassVar[str]
  FILES: ClassVar[tuple[str, ...]] = ()   # fields read from files (paths when recorded)

  num_images: int = 1
  seed: int = 0
  negative_prompt: str | None = None
  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("num_images", integer(self.num_images, "num_images", 1))
    set_("seed", integer(self.seed, "seed", *SEED_RANGE))
    if self.negative_prompt is not None:
      if not isinstance(self.negative_prompt, str):
        raise FieldError(f"negative_prompt must be a string, got {self.negative_prompt!r:.80}",
                         "negative_prompt")
      set_("negative_prompt", prompt_tuple(self.negative_prompt, name="negative_prompt")[0])
    set_("settings", _settings(self.settings))
    self.check()

  def check(self) -> None:
    """The mode's own fields (normalised in place)."""

  def _set(self, name: str, value: Any) -> None:
    object.__setattr__(self, name, value)

  def to_record(self) -> dict[str, Any]:
    """JSON-ready: {"mode": ..., every field}; images must be paths."""
    record = {"mode": self.MODE}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in self.FILES and value is not None and not isinstance(value, str):
        raise ValueError(f"{self.MODE}: {f.name} was given as an array, which a record cannot "
                         "hold; give it as a file path to record the request")
      record[f.name] = to_json(value)
    return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class Generate(Request):
  """Text -> images: `num_images` per prompt, or per row of `embeddings` (a .npy/.npz path or
  conditioning rows: v1 (N, C) or spatial (N, h', w', C); v3 a dict of byt5, byt5_mask, clip,
  clip_image rows), or unconditional samples when neither is given. latent_shape: (h, w)."""
  MODE = "generate"
  FILES = ("embeddings",)
  prompts: tuple[str, ...] | None = None
  embeddings: Any = None
  latent_shape: tuple[int, int] | None = None

  def check(self):
    if self.prompts is not None and self.embeddings is not None:
      raise FieldError("give prompts or embeddings, not both", "embeddings")
    if self.prompts is not None:
      self._set("prompts", prompt_tuple(self.prompts))
    self._set("latent_shape", _integers(self.latent_shape, "latent_shape", 2, 1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inpaint(Request):
  """Repaints part of `image`: a `mask` image of its size (> 0.5 = repaint) or a pixel `box`
  (top, left, bottom, right), exactly one; the rest keeps the image's codes."""
  MODE = "inpaint"
  FILES = ("image", "mask")
  image: Any
  prompts: tuple[str, ...]
  mask: Any = None
  box: tuple[int, int, int, int] | None = None

  def check(self):
    self._set("image", _image(self.image, "image"))
    self._set("prompts", prompt_tuple(self.prompts))
    if (self.mask is None) == (self.box is None):
      raise FieldError("inpainting needs a mask image or a box (top, left, bottom, right), "
                       "exactly one", "box")
    self._set("mask", _image(self.mask, "mask", required=False))
    self._set("box", _integers(self.box, "box", 4))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outpaint(Request):
  """Extends `image` onto a (height, width) pixel `canvas`, placed at `offset` (top, left;
  default centred); both multiples of the VQGAN factor."""
  MODE = "outpaint"
  FILES = ("image",)
  image: Any
  canvas: tuple[int, int]
  prompts: tuple[str, ...]
  offset: tuple[int, int] | None = None

  def check(self):
    self._set("image", _image(self.image, "image"))
    self._set("canvas", _integers(self.canvas, "canvas", 2, 1))
    self._set("prompts", prompt_tuple(self.prompts))
    self._set("offset", _integers(self.offset, "offset", 2))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Edit(Request):
  """Structural editing: the image's codes noised to the settings' start_step, denoised towards
  the prompts."""
  MODE = "edit"
  FILES = ("image",)
  image: Any
  prompts: tuple[str, ...]

  def check(self):
    self._set("image", _image(self.image, "image"))
    self._set("prompts", prompt_tuple(self.prompts))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Vary(Request):
  """Variations of `image` through its CLIP image embedding."""
  MODE = "vary"
  FILES = ("image",)
  image: Any

  def check(self):
    self._set("image", _image(self.image, "image"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interpolate(Request):
  """`frames` (>= 2) along the lerp/slerp (`mode`) path through two or more prompts."""
  MODE = "interpolate"
  prompts: tuple[str, ...]
  frames: int = 8
  mode: str = "lerp"

  def check(self):
    self._set("prompts", prompt_tuple(self.prompts, least=2))
    self._set("frames", integer(self.frames, "frames", 2))
    _choice(self.mode, "mode", ("lerp", "slerp"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Multi(Request):
  """Several prompts over regions (Paella v1): `labels` (a path or an (H, W) int map of prompt
  indices, any size) or a `layout` of equal "columns" or "rows"; `blend`: border softness in
  tokens (0 = hard)."""
  MODE = "multi"
  FILES = ("labels",)
  prompts: tuple[str, ...]
  labels: Any = None
  layout: str = "columns"
  blend: float = 1.0
  latent_shape: tuple[int, int] | None = None

  def check(self):
    self._set("prompts", prompt_tuple(self.prompts))
    _choice(self.layout, "layout", ("columns", "rows"))
    if finite(self.blend, "blend") < 0:
      raise FieldError(f"blend must be >= 0, got {self.blend!r:.80}", "blend")
    self._set("latent_shape", _integers(self.latent_shape, "latent_shape", 2, 1))


REQUESTS: dict[str, type[Request]] = {
    cls.MODE: cls for cls in (Generate, Inpaint, Outpaint, Edit, Vary, Interpolate, Multi)}
MODES = tuple(REQUESTS)


def from_record(record: Mapping[str, Any]) -> Request:
  """The request of a `Request.to_record()` dict (lists back to tuples)."""
  mode = record.get("mode")
  if mode not in REQUESTS:
    raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
  cls = REQUESTS[mode]
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(record) - names - {"mode"})
  if unknown:
    raise ValueError(f"unknown fields {unknown} for {mode}; allowed: {sorted(names)}")
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k != "mode"}
  return cls(**values)
