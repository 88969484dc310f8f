"""Throughput of the training loader (grain over prepared ArrayRecord shards), records/s.

    python benchmarks/bench_loader.py [--records 20000 --batch-size 256 --workers 0 1 4]

Writes a synthetic prepared dataset of the paper's shapes (32x32 int16 tokens, 1024-d float32
embeddings, a short caption: ~6.2 KB a record) in a temporary directory (or --data DIR, a real
one), then draws batches through `RecordBatcher` with each worker count: shuffled random access,
parsing, batching. Prints records/s (after one warm-up batch) with the load average and writes
benchmarks/results/loader.{json,csv}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from common import load_average, parse_ints, write_results

from paella_jax.data.loader import RecordBatcher
from paella_jax.data.records import (FORMAT, MANIFEST, RecordFormat, merge_summaries, write_json,
                                     write_shard)


def write_dataset(out_dir: str, n: int, shards: int = 8) -> None:
  fmt = RecordFormat.for_codebook((32, 32), 1024, 8192)
  rng = np.random.default_rng(0)
  summaries = []
  for s in range(shards):
    size = n // shards
    tokens = rng.integers(0, 8192, (size, 32, 32))
    clip = rng.standard_normal((size, 1024), np.float32)
    name = f"bench-{s:05d}"
    write_shard(os.path.join(out_dir, f"{name}.array_record"),
                [fmt.encode(t, c, "a photograph of a cat sitting on a sofa")
                 for t, c in zip(tokens, clip)])
    summaries.append({"shard": name, "file": f"{name}.array_record", "records": size,
                      "examples": size, "skipped": {}})
  write_json(os.path.join(out_dir, MANIFEST), {
      "format": FORMAT, **merge_summaries(summaries), "latent_shape": [32, 32], "c_clip": 1024,
      "token_dtype": fmt.token_dtype, "num_labels": 8192, "shards": summaries})


def measure(data: str, batch_size: int, workers: int, batches: int) -> float:
  loader = RecordBatcher(data, batch_size, seed=0, workers=workers, prefetch=4)
  next(loader)
  start = time.perf_counter()
  for _ in range(batches):
    next(loader)
  return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=None, help="a prepared dataset (default: synthetic)")
  p.add_argument("--records", type=int, default=20_000)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--workers", type=parse_ints, default=[0, 1, 4],
                 help="worker process counts, e.g. 0,1,4 (0: threads in the main process)")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    data = args.data
    if data is None:
      data = tmp
      t = time.perf_counter()
      write_dataset(data, args.records)
      print(f"wrote {args.records} synthetic records in {time.perf_counter() - t:.1f} s")
    print(f"{os.cpu_count()} CPUs, load average {load_average():.2f} at start")
    rows = []
    for workers in args.workers:
      rate = measure(data, args.batch_size, workers, args.batches)
      rows.append(dict(workers=workers, batch_size=args.batch_size, records_per_s=rate,
                       load_1min=load_average()))
      print(f"workers={workers}: {rate:,.0f} records/s (batch {args.batch_size}, "
            f"load average {rows[-1]['load_1min']:.2f})")
  write_results("loader", rows, records=args.records, synthetic=args.data is None)


if __name__ == "__main__":
  main()
