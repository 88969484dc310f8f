"""Compiled memory of one training step: full fine-tuning against LoRA (docs/finetune.md).

    python benchmarks/bench_lora_memory.py --base paella_v1 --batch 8
    python benchmarks/bench_lora_memory.py --base paella_v3 --batch 8 --base-dtype bfloat16

Compiles the step for one device of this machine (no weights, no data: `Trainer.compile` on
abstract arguments) and prints XLA's memory analysis of each, one row the moment it is measured.
"""

from __future__ import annotations

import argparse
import time

import jax

from paella_jax.configs import finetune_lora
from paella_jax.training.partition import Trainer


def memory_row(config, batch: int) -> str:
  start = time.perf_counter()
  m = Trainer.create(config, jax.devices()[:1]).compile(batch).memory_analysis()
  gib = lambda size: f"{size / 2 ** 30:.2f} GiB"
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return (f"compile {time.perf_counter() - start:.0f} s; arguments {gib(m.argument_size_in_bytes)}"
          f", temporaries {gib(m.temp_size_in_bytes)}, peak {gib(peak)}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--base", default="paella_v1", help="the base model's preset")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--base-dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the model's activation dtype (config.model.dtype)")
  parser.add_argument("--only", choices=("lora", "full"), help="compile one of the two steps")
  args = parser.parse_args()
  lora = finetune_lora.get_config(args.base)
  lora.train.lora.update(rank=args.rank, base_dtype=args.base_dtype)
  full = finetune_lora.get_config(args.base)
  full.train.lora = None
  for only, name, config in (("lora", "LoRA", lora), ("full", "full fine-tuning", full)):
    if args.only not in (None, only):
      continue
    config.train.batch_size, config.mesh.shape = args.batch, (1, 1, 1)
    config.model.dtype = args.compute_dtype
    print(f"{args.base} batch {args.batch}, {args.compute_dtype} compute, {name}: "
          f"{memory_row(config, args.batch)}", flush=True)


if __name__ == "__main__":
  main()
