"""VQGAN encode (and decode) throughput against batch size, through `VQGANCodec`.

`VQGANCodec` is what dataset pre-encoding and `sample.py` use: numpy in, numpy out, jit and
data-parallel over the local devices, so host transfers are included. Random weights.

  python benchmarks/bench_vqgan.py --config vqgan_tiny
  python benchmarks/bench_vqgan.py --config vqgan_sber_f8 --batch-sizes 1,2 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib

from common import parse_ints, random_vqgan, time_calls, write_results

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.encoders.vq import VQGANCodec
from paella_jax.models.paella import count_params


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=("vqgan_tiny", "vqgan_sber_f8"), default="vqgan_tiny")
  parser.add_argument("--batch-sizes", type=parse_ints, default=[1, 8, 32, 128])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--name", default=None, help="result file name (default vqgan_CONFIG_DTYPE)")
  args = parser.parse_args()

  config = importlib.import_module(f"configs.{args.config}").get_config()
  vq, params = random_vqgan(config)
  size = config.image_size
  print(f"{args.config}: {count_params(params):,} parameters, {size}x{size}, {args.dtype}, "
        f"{jax.devices()[0].device_kind}")
  rows = []
  for batch in args.batch_sizes:
    codec = VQGANCodec(vq, params, batch_size=batch, dtype=jnp.dtype(args.dtype))
    images = np.random.default_rng(batch).random((batch, size, size, 3), np.float32)
    codes = codec.encode(images)
    row = dict(config=args.config, dtype=args.dtype, batch=batch, image_size=size)
    for part, fn in (("encode", lambda: codec.encode(images)),
                     ("decode", lambda: codec.decode(codes))):
      t = time_calls(fn, args.repeats)
      row[f"{part}_ms"] = 1e3 * t["median_s"]
      row[f"{part}_images_per_s"] = batch / t["median_s"]
      row["load_1min"] = t["load_1min"]
    rows.append(row)
    print(f"B={batch:4d}  encode {row['encode_images_per_s']:9.1f} img/s  decode "
          f"{row['decode_images_per_s']:9.1f} img/s  load {row['load_1min']:.1f}")
    write_results(args.name or f"vqgan_{args.config.removeprefix('vqgan_')}_{args.dtype}", rows,
                  parameters=count_params(params))


if __name__ == "__main__":
  main()
