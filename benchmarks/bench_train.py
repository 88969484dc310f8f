"""Training throughput and MFU of the token predictor's step (`paella_jax.training.partition`).

The step is the trainer's own: jit with shardings over every local device, state donated,
AdamW + clipping, noising and CFG dropout inside. FLOPs per step come from XLA's cost analysis
of the compiled step; MFU = FLOPs x steps/s / peak FLOP/s, the peak from the device kind
(`paella_jax.hardware`) or `--peak-flops` (CPUs have no entry: MFU is left empty and the
achieved GFLOP/s is reported instead). `--compile-only` reports compile time, FLOPs and memory
without running a step (for the paper config on a CPU).

  python benchmarks/bench_train.py --config tiny
  python benchmarks/bench_train.py --config paella_v1 --batch-sizes 64 --dtype bfloat16
  python benchmarks/bench_train.py --config paella_v1 --batch-sizes 1 --compile-only
  python benchmarks/bench_train.py --config cpu_compare --batch-sizes 8 --lora 8   # LoRA step

`--lora RANK` times the LoRA fine-tuning step instead (configs/finetune_lora.py: adapters of that
rank on the family's default layers, the frozen base in `--base-dtype`, a zero stand-in for its
weights: the step's time does not depend on their values).
"""

from __future__ import annotations

import argparse
import time

from common import (PRESETS, load_average, load_preset, parse_ints, time_calls,
                    write_results)

import jax
import jax.numpy as jnp

from paella_jax.configs import finetune_lora
from paella_jax.data.arrays import random_token_arrays
from paella_jax.hardware import chip_info, out_of_memory
from paella_jax.sharding import global_batch
from paella_jax.training.partition import Trainer


def measure_batch(args, trainer: Trainer, batch_size: int, peak: float) -> dict:
  """Compile time, FLOPs and memory of the step at one batch size, and unless --compile-only its
  time, throughput and MFU; prints a line."""
  config = trainer.config
  start = time.perf_counter()
  step = trainer.compile(batch_size)
  compile_s = time.perf_counter() - start
  flops = step.cost_analysis().get("flops", 0.0)  # per device, one step
  memory = step.memory_analysis()
  row = dict(config=args.config, dtype=args.dtype, lora_rank=args.lora, batch=batch_size,
             devices=jax.device_count(),
             compile_s=compile_s, gflops_per_step=flops / 1e9,
             gflops_per_image=flops * jax.device_count() / batch_size / 1e9,
             temp_gib=getattr(memory, "temp_size_in_bytes", 0) / 2 ** 30,
             argument_gib=getattr(memory, "argument_size_in_bytes", 0) / 2 ** 30)
  if not args.compile_only:
    tokens, clip = random_token_arrays(batch_size, config.latent_shape, config.model.num_labels,
                                       config.model.c_clip)
    batch = global_batch({"tokens": tokens, "clip": clip}, trainer.batch_sharding, batch_size)
    state = trainer.init()
    frozen = tuple(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), arg)
                   for arg in trainer.abstract_frozen_args())
    box = [state]

    def run():
      for _ in range(args.steps):
        box[0], metrics = step(box[0], batch, *frozen)
      jax.block_until_ready(metrics)

    t = time_calls(run, args.repeats)
    step_s = t["median_s"] / args.steps
    row.update(step_ms=1e3 * step_s, images_per_s=batch_size / step_s,
               achieved_gflops_per_s=flops / step_s / 1e9,
               mfu=flops / step_s / peak if peak else None)
  row["load_1min"] = load_average()
  print(f"B={batch_size:4d}  compile {compile_s:6.1f} s  {row['gflops_per_image']:8.3f} GFLOP/image"
        + ("" if args.compile_only else
           f"  step {row['step_ms']:8.1f} ms  {row['images_per_s']:8.1f} img/s  "
           f"{row['achieved_gflops_per_s']:7.1f} GFLOP/s"
           + (f"  MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""))
        + f"  load {row['load_1min']:.1f}")
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--batch-sizes", type=parse_ints, default=[16, 64, 256])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (float32 master weights and optimizer either way)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--peak-flops", type=float, default=0.0,
                      help="peak FLOP/s of one device (default: looked up from the device kind)")
  parser.add_argument("--compile-only", action="store_true")
  parser.add_argument("--lora", type=int, default=0, metavar="RANK",
                      help="time the LoRA step with adapters of this rank (0: full training)")
  parser.add_argument("--base-dtype", choices=("float32", "bfloat16"), default="bfloat16",
                      help="the frozen base's dtype with --lora")
  parser.add_argument("--name", default=None,
                      help="result file name (default train_CONFIG_DTYPE, +_lora with --lora)")
  args = parser.parse_args()

  device_kind = jax.devices()[0].device_kind
  peak = args.peak_flops or (chip_info(device_kind) or (0.0,))[0]
  config = load_preset(args.config, args.dtype)[0]
  if args.lora:
    finetune_lora.with_lora(config).train.lora.update(rank=args.lora, base_dtype=args.base_dtype)
  trainer = Trainer.create(config)
  rows = []
  for batch_size in args.batch_sizes:
    try:
      row = measure_batch(args, trainer, batch_size, peak)
    except jax.errors.JaxRuntimeError as error:  # a batch too large for the device: a result too
      if not out_of_memory(error):
        raise
      row = dict(config=args.config, dtype=args.dtype, batch=batch_size, error="out of memory")
      print(f"B={batch_size:4d}  out of device memory")
    rows.append(row)
    name = f"train_{args.config}_{args.dtype}" + ("_lora" if args.lora else "")
    write_results(args.name or name, rows, peak_flops=peak,
                  device_kind=device_kind)


if __name__ == "__main__":
  main()
