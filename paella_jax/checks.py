"""Plain values checked once, with errors that name the field: what requests and sampler settings
are built from, and their JSON form. A refused value raises `FieldError` (a ValueError) whose
`field` names it, which the server returns as {"error": ..., "field": ...}."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


class FieldError(ValueError):
  """A value refused; `field` names the request field or sampler setting it came from."""

  def __init__(self, message: str, field: str | None):
    super().__init__(message)
    self.field = field


def integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
  """`value` as an int in [low, high] (either bound may be absent); bools and floats refused."""
  if isinstance(value, np.integer):
    value = int(value)
  if (isinstance(value, bool) or not isinstance(value, int)
      or (low is not None and value < low) or (high is not None and value > high)):
    span = "" if low is None else f" >= {low}" if high is None else f" in [{low}, {high}]"
    raise FieldError(f"{name} must be an integer{span}, got {value!r:.80}", name)
  return value


def finite(value: Any, name: str) -> float:
  """`value` as a finite float; bools and strings refused."""
  if isinstance(value, np.floating):
    value = float(value)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise FieldError(f"{name} must be a finite number, got {value!r:.80}", name)
  return float(value)


def to_json(value: Any) -> Any:
  """Tuples and arrays as lists, mappings item by item; anything else as it is."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (tuple, list)):
    return [to_json(v) for v in value]
  if isinstance(value, Mapping):
    return {k: to_json(v) for k, v in value.items()}
  return value
