"""Plots sampling time against batch size (like the paper's Fig. 7) from the result files.

Reads every `benchmarks/results/sampling_*.json` (or the files given) and draws, per file, the
time of one batch (sampling + VQGAN decoding) and the time per image against the batch size;
files of the same preset, dtype and device (e.g. a run split in two) are drawn as one line.

  python benchmarks/plot.py                      # -> docs/benchmarks_sampling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, ROOT

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="*", type=Path)
  parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks_sampling.png")
  args = parser.parse_args()
  files = args.files or sorted(RESULTS.glob("sampling_*.json"))
  series: dict[str, dict[int, dict]] = {}  # label -> batch -> row; files of one label merge
  for path in files:
    result = json.loads(path.read_text())
    if not result["rows"]:
      continue
    env = result["environment"]
    device = (f"CPU, {env['cpu_count']} cores" if env["backend"] == "cpu"
              else f"{env['device_count']}x {env['device_kind']}")
    label = (f"{result['config']} {result['rows'][0]['dtype']}, {device}"
             + ("" if result["decoding"] else ", no decoding"))
    series.setdefault(label, {}).update({row["batch"]: row for row in result["rows"]
                                         if "error" not in row})
  fig, (ax_batch, ax_image) = plt.subplots(1, 2, figsize=(11, 4.2))
  for label, by_batch in series.items():
    batch = sorted(by_batch)
    total = [by_batch[b].get("total_ms", by_batch[b]["sample_ms"]) / 1e3 for b in batch]
    ax_batch.plot(batch, total, "o-", label=label)
    ax_image.plot(batch, [t / b * 1e3 for t, b in zip(total, batch)], "o-", label=label)
  for ax, ylabel in ((ax_batch, "seconds per batch"), (ax_image, "ms per image")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
  ax_batch.set_title("8 steps + CFG + typical filter (+ VQGAN decode)")
  ax_image.set_title("time per image")
  ax_image.legend(fontsize=8)
  fig.tight_layout()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
