"""Per-chip facts for MFU and memory checks: peak dense bf16 FLOP/s and HBM bytes by device kind.

Keys are matched as substrings of `device.device_kind` (e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3").
"""

from __future__ import annotations

GiB = 1024 ** 3

# (device kind substring, peak bf16 FLOP/s, HBM bytes), most specific first.
CHIPS = (
    ("TPU v6 lite", 918e12, 32 * GiB),   # v6e (Trillium)
    ("TPU v5 lite", 197e12, 16 * GiB),   # v5e
    ("TPU v5p", 459e12, 95 * GiB),
    ("TPU v5", 459e12, 95 * GiB),
    ("TPU v4", 275e12, 32 * GiB),
    ("TPU v3", 123e12, 32 * GiB),
    ("H200", 989e12, 141 * GiB),
    ("H100", 989e12, 80 * GiB),
    ("A100", 312e12, 80 * GiB),
)


def chip_info(device_kind: str) -> tuple[float, int] | None:
  """(peak FLOP/s, HBM bytes) of a device kind, or None when it is not in the table."""
  for key, flops, hbm in CHIPS:
    if key.lower() in device_kind.lower():
      return flops, hbm
  return None


def out_of_memory(error: Exception) -> bool:
  """Whether a JAX runtime error is the device running out of memory (XLA's RESOURCE_EXHAUSTED)."""
  return "RESOURCE_EXHAUSTED" in str(error)
