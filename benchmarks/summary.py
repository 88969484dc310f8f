"""The speed targets against the measured numbers, from the result files of one backend.

Targets (for the paper config, 256x256, 8 steps + CFG + typical filtering, decoding included): batch-1
latency <= 150 ms, >= 60 images/s at batch 64, training >= 40% MFU in bf16; for paella-serve (tiny
model, 16 clients), batching >= 4x the throughput of one request per call. Prints a markdown
table per target and per result file found (nothing is measured here).

  python benchmarks/summary.py --backend gpu
  python benchmarks/summary.py --backend cpu --results /tmp/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS

TARGETS = (  # (result file stem for a preset, batch, column, comparison, bound, what)
    ("sampling_{}_bfloat16", 1, "total_ms", "<=", 150.0, "batch-1 latency (ms), bf16"),
    ("sampling_{}_bfloat16", 64, "images_per_s", ">=", 60.0, "images/s at batch 64, bf16"),
    ("sampling_{}_float32", 1, "total_ms", "<=", 150.0, "batch-1 latency (ms), fp32"),
    ("sampling_{}_float32", 64, "images_per_s", ">=", 60.0, "images/s at batch 64, fp32"),
    ("train_{}_bfloat16", None, "mfu", ">=", 0.40, "training MFU, bf16 (largest batch)"),
)


def load(results: Path, backend: str) -> dict[str, dict]:
  """Result stem (without the backend suffix) -> parsed JSON, for one backend."""
  return {path.stem.removesuffix(f"_{backend}"): json.loads(path.read_text())
          for path in sorted(results.glob(f"*_{backend}.json"))}


def merged_rows(found: dict[str, dict], stem: str) -> list[dict]:
  """Rows of `stem` and of any file named `stem_*` (a run split into parts)."""
  return [row for name, result in found.items() if name == stem or name.startswith(stem + "_")
          for row in result["rows"]]


def target_table(found: dict[str, dict], preset: str) -> list[str]:
  lines = [f"| target ({preset}) | measured | bound | met |", "| --- | --- | --- | --- |"]
  for stem, batch, column, comparison, bound, what in TARGETS:
    rows = [row for row in merged_rows(found, stem.format(preset)) if row.get(column) is not None
            and (batch is None or row.get("batch") == batch)]
    if not rows:
      lines.append(f"| {what} | not measured | {comparison} {bound:g} | |")
      continue
    value = max(rows, key=lambda row: row["batch"])[column]
    met = value <= bound if comparison == "<=" else value >= bound
    lines.append(f"| {what} | {value:.4g} | {comparison} {bound:g} | {'yes' if met else 'NO'} |")
  return lines + [serving_target(found.get("serve_tiny"))]


def serving_target(result: dict | None, bound: float = 4.0) -> str:
  """The table's row for bench_serve's batching speedup (its best bucket policy)."""
  what = "serving: batching speedup over one request per call (tiny model)"
  if result is None:
    return f"| {what} | not measured | >= {bound:g} | |"
  value = max(result["speedup"].values())
  return f"| {what} | {value:.3g} | >= {bound:g} | {'yes' if value >= bound else 'NO'} |"


def file_table(name: str, result: dict) -> list[str]:
  rows = result["rows"]
  columns = list(dict.fromkeys(k for row in rows for k in row))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  return ([f"**{name}**", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
          + ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backend", default="gpu")
  parser.add_argument("--results", type=Path, default=RESULTS)
  parser.add_argument("--preset", default="paella_v1", help="the preset the targets are for")
  args = parser.parse_args()
  found = load(args.results, args.backend)
  if not found:
    raise SystemExit(f"no *_{args.backend}.json result files in {args.results}")
  env = next(iter(found.values()))["environment"]
  print(f"{env['device_count']}x {env['device_kind']}, JAX {env['jax']}, {env['date']}\n")
  print("\n".join(target_table(found, args.preset)))
  for name, result in found.items():
    if result["rows"]:
      print("\n" + "\n".join(file_table(name, result)))


if __name__ == "__main__":
  main()
