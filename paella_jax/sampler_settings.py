"""Sampler settings: one validated dataclass; the defaults of each model family and mode are its
`Family.sampler_defaults` (paella_jax/families.py), recorded in each checkpoint's model.json.

A checkpoint's model.json records its sampling defaults under meta["sampling"] (the trainer writes
its config's `sampling`, the converters the family's defaults), in this form:

    {"steps": 8, "cfg": 5.0, "typical_mass": 0.2, ..., "modes": {"edit": {"steps": 24, ...}}}

`SamplerSettings.from_record(record, mode)` merges the mode's entries over the general ones;
`with_overrides` applies a caller's values. `None` means "off" for `cfg` (no guidance) and
`typical_mass` (no typical filtering); there is no other special value.

The traced settings (cfg, temperature, typical_mass) may also hold one value per row: cfg a (B,)
or (B, 2) array, temperature (B, 2), typical_mass (B,); `SamplerSettings.per_row` builds them
for the rows of several calls sampled together.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from paella_jax.checks import FieldError, finite, integer, to_json

RENOISE_MODES = ("start", "prev", "rand")
MODES = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate", "multi")
OFF = "off"  # the override turning cfg or typical filtering off


def _rows(value: np.ndarray, name: str) -> np.ndarray:
  """A per-row array of finite float32 values."""
  array = np.asarray(value, np.float32)
  if not np.isfinite(array).all():
    raise FieldError(f"{name} must be a finite number, got {array[~np.isfinite(array)][0]}", name)
  return array


def _schedule(value: Any, name: str) -> tuple[float, float] | np.ndarray:
  """(start, end) of a linear schedule as floats, or a (B, 2) array: one per row."""
  if isinstance(value, np.ndarray) and value.ndim == 2:
    if value.shape[1] != 2:
      raise FieldError(f"{name} schedules per row must be (B, 2), got {value.shape}", name)
    return _rows(value, name)
  if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2:
    raise FieldError(f"{name} must be (start, end), got {value!r:.80}", name)
  return tuple(finite(v, name) for v in value)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Every host-side setting of `paella_jax.sampling.sample`, checked on construction.

  steps: T >= 1. cfg: guidance weight (a number, or (start, end) over the steps; per row a (B,)
  or (B, 2) array), None = off. typical_mass: in (0, 1] (per row a (B,) array), None = off.
  typical_min_tokens >= 1. temperature: (start, end) or (B, 2), each finite and >= 0
  (0 = argmax). renoise_mode: one of RENOISE_MODES. start_step: in [0, steps].
  """
  steps: int
  cfg: float | tuple[float, float] | np.ndarray | None
  typical_mass: float | np.ndarray | None
  typical_min_tokens: int
  temperature: tuple[float, float] | np.ndarray
  renoise_mode: str
  start_step: int

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    for name in ("cfg", "typical_mass", "temperature"):  # device arrays: read back to the host
      value = getattr(self, name)
      if hasattr(value, "shape") and not isinstance(value, (np.ndarray, np.generic)):
        set_(name, np.asarray(value))
    set_("steps", integer(self.steps, "steps", 1))
    if isinstance(self.cfg, np.ndarray) and self.cfg.ndim == 1:
      set_("cfg", _rows(self.cfg, "cfg"))
    elif isinstance(self.cfg, (list, tuple, np.ndarray)):
      set_("cfg", _schedule(self.cfg, "cfg"))
    elif self.cfg is not None:
      set_("cfg", finite(self.cfg, "cfg"))
    if self.typical_mass is not None:
      if isinstance(self.typical_mass, np.ndarray):
        mass = _rows(self.typical_mass, "typical_mass")
        low, high = float(mass.min(initial=1.0)), float(mass.max(initial=1.0))
      else:
        mass = low = high = finite(self.typical_mass, "typical_mass")
      if not (0.0 < low and high <= 1.0):
        raise FieldError(f"typical_mass must lie in (0, 1] (or be off), got {self.typical_mass}",
                         "typical_mass")
      set_("typical_mass", mass)
    set_("typical_min_tokens", integer(self.typical_min_tokens, "typical_min_tokens", 1))
    temperature = _schedule(self.temperature, "temperature")
    if np.min(temperature) < 0:
      raise FieldError(f"temperatures must be >= 0, got {self.temperature}", "temperature")
    set_("temperature", temperature)
    if self.renoise_mode not in RENOISE_MODES:
      raise FieldError(f"renoise_mode must be one of {RENOISE_MODES}, got "
                       f"{self.renoise_mode!r:.80}", "renoise_mode")
    try:
      set_("start_step", integer(self.start_step, "start_step", 0, self.steps))
    except ValueError:
      raise FieldError(f"start_step must be an integer in [0, steps={self.steps}], "
                       f"got {self.start_step!r:.80}", "start_step") from None

  @classmethod
  def from_record(cls, record: Mapping[str, Any], mode: str = "generate") -> SamplerSettings:
    """The settings of a model.json `sampling` record for `mode` (its `modes` entry on top)."""
    if mode not in MODES:
      raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in record.items() if k in fields}
    values.update(record.get("modes", {}).get(mode, {}))
    missing = fields - set(values)
    if missing:
      raise ValueError(f"the sampling record lacks {sorted(missing)}")
    return cls(**values)

  @classmethod
  def for_family(cls, kind: str, mode: str = "generate") -> SamplerSettings:
    """A model family's default settings for `mode` (its `Family.sampler_defaults`)."""
    from paella_jax import families
    return cls.from_record(families.get(kind).sampler_defaults, mode)

  @classmethod
  def per_row(cls, parts: Sequence[tuple[SamplerSettings, int]]) -> SamplerSettings:
    """One settings for the rows of several calls sampled together: `parts` lists (settings,
    rows) of calls of one `shared_key`; cfg, temperature and typical_mass become per-row arrays
    ((B, 2), (B, 2), (B,))."""
    keys = {settings.shared_key for settings, _ in parts}
    if len(keys) != 1:
      raise ValueError(f"rows sampled together must share {SHARED_FIELDS}, got {sorted(keys)}")

    first = parts[0][0]
    return dataclasses.replace(
        first, temperature=_stack(parts, "temperature", 2),
        cfg=None if first.cfg is None else _stack(parts, "cfg", 2),
        typical_mass=None if first.typical_mass is None else _stack(parts, "typical_mass", 1)[:, 0])

  @property
  def shared_key(self) -> tuple:
    """What the rows of one sampler call must share: the untraced settings, and whether
    guidance and typical filtering are on."""
    return (self.steps, self.start_step, self.renoise_mode, self.typical_min_tokens,
            self.cfg is None, self.typical_mass is None)

  def with_overrides(self, **overrides) -> SamplerSettings:
    """A copy with the given fields replaced; a value of None leaves a field as it is, except
    for the explicit "off" of cfg and typical_mass, written as the string "off"."""
    return self.replace(**{k: (None if _is_off(v) else v) for k, v in overrides.items()
                           if v is not None})

  def replace(self, **values) -> SamplerSettings:
    """A copy with these fields replaced (None turns cfg or typical filtering off)."""
    unknown = set(values) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown sampler settings: {sorted(unknown)}")
    return dataclasses.replace(self, **values)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready (tuples and arrays as lists), as recorded in sidecars."""
    return {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}


SHARED_FIELDS = ("steps", "start_step", "renoise_mode", "typical_min_tokens",
                 "cfg on/off", "typical_mass on/off")


def _stack(parts: Sequence[tuple[SamplerSettings, int]], name: str, width: int) -> np.ndarray:
  """One setting of several calls as (B, width) float32 rows: a number repeated, a (start, end)
  tuple on every row of its call, a per-row array as it is ((B,) repeated to width 2)."""
  blocks = []
  for settings, rows in parts:
    value = getattr(settings, name)
    if isinstance(value, np.ndarray):
      value = value.reshape(rows, -1)
    blocks.append(np.broadcast_to(np.asarray(value, np.float32), (rows, width)))
  return np.concatenate(blocks)


def _is_off(value) -> bool:
  return isinstance(value, str) and value == OFF
