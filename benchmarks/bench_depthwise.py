"""The 3x3 depthwise convolution: the model's nine shifted multiply-adds against XLA's grouped conv.

`DepthwiseConv3x3` (models/paella.py) writes the reflect-padded depthwise convolution as nine
shifted multiply-adds, which XLA fuses into one elementwise pass; on XLA:CPU that is ~10x faster
than `lax.conv_general_dilated(feature_group_count=C)`. Which form suits a GPU or TPU is measured
here, forward and forward + backward, at the activation shapes of a preset's levels, with the
same parameters; the outputs are checked equal.

  python benchmarks/bench_depthwise.py --config tiny --batch 64
  python benchmarks/bench_depthwise.py --config paella_v1 --batch 128 --dtype bfloat16
"""

from __future__ import annotations

import argparse

from common import PRESETS, load_average, load_preset, time_calls, write_results

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from paella_jax.models.paella import DepthwiseConv3x3, build_model


def grouped_conv(params: dict, x: jax.Array) -> jax.Array:
  """The same reflect-padded depthwise conv as one grouped XLA convolution."""
  c = x.shape[-1]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  y = jax.lax.conv_general_dilated(padded, params["kernel"].astype(x.dtype), (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=c)
  return y + params["bias"].astype(x.dtype)


def level_shapes(config, batch: int) -> list[tuple[int, int, int, int]]:
  """(B, H, W, C) of the ResBlock activations at each level of the preset's model."""
  model = build_model(config.model)
  h, w = config.latent_shape
  return [(batch, h // 2 ** i, w // 2 ** i, c) for i, c in enumerate(model.c_levels)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--batch", type=int, default=64,
                      help="activation batch (a sampler step with CFG runs 2x the image batch)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--name", default=None, help="result file name (default depthwise_CONFIG_DTYPE)")
  args = parser.parse_args()

  config, _ = load_preset(args.config, args.dtype)
  dtype = jnp.dtype(args.dtype)
  shifted_module = DepthwiseConv3x3(dtype=dtype)
  forms = {"shifted": lambda p, x: shifted_module.apply({"params": p}, x), "grouped": grouped_conv}
  rows = []
  for shape in level_shapes(config, args.batch):
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    params = nn.meta.unbox(shifted_module.init(jax.random.key(1), x)["params"])
    row = dict(config=args.config, dtype=args.dtype, shape="x".join(map(str, shape)))
    outputs = {}
    for name, form in forms.items():
      forward = jax.jit(form)
      backward = jax.jit(jax.grad(lambda p, x, f=form: jnp.sum(f(p, x).astype(jnp.float32) ** 2),
                                  argnums=(0, 1)))
      outputs[name] = np.asarray(forward(params, x), np.float32)
      row[f"{name}_forward_ms"] = 1e3 * time_calls(
          lambda: forward(params, x).block_until_ready(), args.repeats)["median_s"]
      row[f"{name}_backward_ms"] = 1e3 * time_calls(
          lambda: jax.block_until_ready(backward(params, x)), args.repeats)["median_s"]
    row["max_abs_difference"] = float(np.max(np.abs(outputs["shifted"] - outputs["grouped"])))
    row["grouped_over_shifted_forward"] = row["grouped_forward_ms"] / row["shifted_forward_ms"]
    row["grouped_over_shifted_backward"] = row["grouped_backward_ms"] / row["shifted_backward_ms"]
    row["load_1min"] = load_average()
    rows.append(row)
    print(f"{row['shape']:>18s}  forward: shifted {row['shifted_forward_ms']:8.3f} ms, grouped "
          f"{row['grouped_forward_ms']:8.3f} ms  fwd+bwd: shifted {row['shifted_backward_ms']:8.3f}"
          f" ms, grouped {row['grouped_backward_ms']:8.3f} ms  max diff "
          f"{row['max_abs_difference']:.1e}  load {row['load_1min']:.1f}")
  write_results(args.name or f"depthwise_{args.config}_{args.dtype}", rows)


if __name__ == "__main__":
  main()
