"""Sampler settings: one validated dataclass, with defaults per model family and editing mode.

A checkpoint's model.json records its sampling defaults under meta["sampling"] (the trainer writes
its config's `sampling`, the converters the family's defaults below), in this form:

    {"steps": 8, "cfg": 5.0, "typical_mass": 0.2, ..., "modes": {"edit": {"steps": 24, ...}}}

`SamplerSettings.from_record(record, mode)` merges the mode's entries over the general ones;
`with_overrides` applies a caller's values. `None` means "off" for `cfg` (no guidance) and
`typical_mass` (no typical filtering); there is no other special value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

RENOISE_MODES = ("start", "prev", "rand")
MODES = ("generate", "inpaint", "outpaint", "edit", "vary", "interpolate", "multi")

# The paper's settings for Paella v1 (8 steps; guidance 5 to generate, 4 to interpolate and
# outpaint, 6 to inpaint and edit; structural editing runs 24 steps from step 8, renoise 'prev').
V1_DEFAULTS = dict(
    steps=8, cfg=5.0, typical_mass=0.2, typical_min_tokens=1, temperature=(1.0, 1.0),
    renoise_mode="start", start_step=0,
    modes=dict(inpaint=dict(cfg=6.0), outpaint=dict(cfg=4.0), interpolate=dict(cfg=4.0),
               edit=dict(cfg=6.0, steps=24, start_step=8, renoise_mode="prev")))

# The v3 release's sampler (src_distributed/utils.py::sample): 12 steps, guidance 8 throughout,
# temperature 0.7 -> 0.3, no typical filtering. The release has no structural editing; ours
# starts it at step 4 of 12 (noise level 2/3: each token of the image replaced with p 2/3).
V3_DEFAULTS = dict(
    steps=12, cfg=(8.0, 8.0), typical_mass=None, typical_min_tokens=1, temperature=(0.7, 0.3),
    renoise_mode="start", start_step=0, modes=dict(edit=dict(start_step=4)))

FAMILY_DEFAULTS = {"paella_v1": V1_DEFAULTS, "paella_v3": V3_DEFAULTS}


def _finite(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Every host-side setting of `paella_jax.sampling.sample`, checked on construction.

  steps: T >= 1. cfg: guidance weight (a number, or (start, end) over the steps), None = off.
  typical_mass: in (0, 1], None = off. typical_min_tokens >= 1. temperature: (start, end), each
  finite and >= 0 (0 = argmax). renoise_mode: one of RENOISE_MODES. start_step: in [0, steps].
  """
  steps: int = 8
  cfg: float | tuple[float, float] | None = 5.0
  typical_mass: float | None = 0.2
  typical_min_tokens: int = 1
  temperature: tuple[float, float] = (1.0, 1.0)
  renoise_mode: str = "start"
  start_step: int = 0

  def __post_init__(self):
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
      raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
    if self.cfg is not None:
      if isinstance(self.cfg, (list, tuple)):
        if len(self.cfg) != 2:
          raise ValueError(f"cfg must be a number or (start, end), got {self.cfg!r}")
        object.__setattr__(self, "cfg", tuple(_finite(c, "cfg") for c in self.cfg))
      else:
        object.__setattr__(self, "cfg", _finite(self.cfg, "cfg"))
    if self.typical_mass is not None:
      mass = _finite(self.typical_mass, "typical_mass")
      if not 0.0 < mass <= 1.0:
        raise ValueError(f"typical_mass must lie in (0, 1] (or be off), got {mass}")
      object.__setattr__(self, "typical_mass", mass)
    if (isinstance(self.typical_min_tokens, bool) or not isinstance(self.typical_min_tokens, int)
        or self.typical_min_tokens < 1):
      raise ValueError("typical_min_tokens must be an integer >= 1, got "
                       f"{self.typical_min_tokens!r}")
    temperature = tuple(self.temperature)
    if len(temperature) != 2:
      raise ValueError(f"temperature must be (start, end), got {self.temperature!r}")
    temperature = tuple(_finite(t, "temperature") for t in temperature)
    if min(temperature) < 0:
      raise ValueError(f"temperatures must be >= 0, got {temperature}")
    object.__setattr__(self, "temperature", temperature)
    if self.renoise_mode not in RENOISE_MODES:
      raise ValueError(f"renoise_mode must be one of {RENOISE_MODES}, got {self.renoise_mode!r}")
    if (isinstance(self.start_step, bool) or not isinstance(self.start_step, int)
        or not 0 <= self.start_step <= self.steps):
      raise ValueError(f"start_step must be an integer in [0, steps={self.steps}], "
                       f"got {self.start_step!r}")

  @classmethod
  def from_record(cls, record: Mapping[str, Any], mode: str = "generate") -> SamplerSettings:
    """The settings of a model.json `sampling` record for `mode` (its `modes` entry on top)."""
    if mode not in MODES:
      raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in record.items() if k in fields}
    values.update(record.get("modes", {}).get(mode, {}))
    return cls(**values)

  def with_overrides(self, **overrides) -> SamplerSettings:
    """A copy with the given fields replaced; a value of None leaves a field as it is, except
    for the explicit "off" of cfg and typical_mass, written as the string "off"."""
    values = {k: (None if v == "off" else v) for k, v in overrides.items() if v is not None}
    unknown = set(values) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"unknown sampler settings: {sorted(unknown)}")
    return dataclasses.replace(self, **values)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready (tuples as lists), as recorded in sidecars."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  def sample_kwargs(self) -> dict[str, Any]:
    """Keyword arguments of `paella_jax.sampling.sample`."""
    return dict(steps=self.steps, cfg=self.cfg, typical_mass=self.typical_mass,
                typical_min_tokens=self.typical_min_tokens, temperature=self.temperature,
                renoise_mode=self.renoise_mode, start_step=self.start_step)


def family_defaults(kind: str) -> dict[str, Any]:
  """The sampling record a converter writes into model.json for a model family."""
  if kind not in FAMILY_DEFAULTS:
    raise ValueError(f"no sampling defaults for model kind {kind!r}; "
                     f"one of {sorted(FAMILY_DEFAULTS)}")
  return FAMILY_DEFAULTS[kind]
