"""Numerics on the current backend: parity with the original's fixtures, bf16 error, determinism.

The tests check parity on CPUs; an accelerator computes differently (TF32 matmuls and
convolutions on Ampere/Hopper GPUs, bf16 passes on TPUs at the default precision, other
reduction orders). This reports, on whatever device JAX runs on:
  - the token predictor against `paella_v1_tiny_io.npz` (pooled and spatial conditioning), at
    the default matmul precision and at "highest", and in bfloat16 compute;
  - the typical filter against `paella_v1_typical_filter.npz` (must be equal bit for bit) and
    against the original's sort on 8192-code rows;
  - the VQGAN against `rudalle_gumbel_vqgan_tiny_io.npz` (codes equal, decoded error);
  - whether the sampler gives the same codes twice for the same key (what `sample.py replay`
    relies on).
It needs torch (to read the fixtures' checkpoints) and the fixtures (`--reference`, default
tests/fixtures).

  python benchmarks/check_numerics.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_typical import argsort_filter
from common import ROOT, write_results

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.convert import paella_v1_from_torch, vqgan_from_torch
from paella_jax.sampling import sample, typical_filter

PRECISIONS = ("default", "highest")


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.asarray(x).transpose(0, 2, 3, 1)


def paella_rows(io, model, params) -> list[dict]:
  """Max abs error of the converted token predictor against the original's logits."""
  inputs = {"pooled": (io["c"], io["logits"]), "spatial": (nhwc(io["c_map"]), io["logits_map"])}
  rows = []
  for dtype in ("float32", "bfloat16"):
    run = jax.jit(model.clone(dtype=jnp.dtype(dtype)).apply)
    for precision in PRECISIONS if dtype == "float32" else ("default",):
      for name, (clip, expected) in inputs.items():
        with jax.default_matmul_precision(precision):
          logits = run({"params": params}, jnp.asarray(io["x"]), jnp.asarray(clip),
                       jnp.asarray(io["r"]))
        expected = nhwc(expected)
        error = np.abs(np.asarray(logits) - expected)
        rows.append(dict(check=f"paella logits, {name}", dtype=dtype, precision=precision,
                         max_abs_error=float(error.max()), mean_abs_error=float(error.mean()),
                         logit_scale=float(np.abs(expected).max()),
                         argmax_agreement=float(np.mean(np.argmax(np.asarray(logits), -1)
                                                        == np.argmax(expected, -1)))))
  return rows


def typical_rows(reference: Path) -> list[dict]:
  """The typical filter against the original's fixture and its sort on 8192-code rows."""
  data = np.load(reference / "paella_v1_typical_filter.npz")
  logits = data["logits_nchw"].transpose(0, 2, 3, 1).reshape(-1, data["logits_nchw"].shape[1])
  equal = []
  for mass in (0.2, 0.5, 0.9):
    for min_tokens in (1, 5):
      out = np.asarray(typical_filter(jnp.asarray(logits), mass, min_tokens))
      equal.append(np.array_equal(out, data[f"mass{mass}_min{min_tokens}"]))
  large = jax.random.normal(jax.random.key(0), (4096, 8192)) * 3.0
  same_as_sort = np.array_equal(np.asarray(jax.jit(typical_filter)(large, 0.2)),
                                np.asarray(jax.jit(argsort_filter)(large, 0.2)))
  return [dict(check="typical filter, original's fixture (6 cases)", equal_cases=sum(equal),
               cases=len(equal)),
          dict(check="typical filter vs sort, 4096 x 8192 random rows", equal=same_as_sort)]


def vqgan_rows(reference: Path) -> list[dict]:
  """Codes and decoded images of the converted Sber-VQGAN-type model against the fixture."""
  io = np.load(reference / "rudalle_gumbel_vqgan_tiny_io.npz")
  module, params = vqgan_from_torch(reference / "rudalle_gumbel_vqgan_tiny.ckpt", resolution=32)
  images = jnp.asarray(nhwc(io["image"]))
  rows = []
  for precision in PRECISIONS:
    with jax.default_matmul_precision(precision):
      codes = module.apply({"params": params}, images, method="encode")
      decoded = module.apply({"params": params}, jnp.asarray(io["indices"]), method="decode_codes")
    expected = (np.clip(nhwc(io["decoded"]), -1, 1) + 1) / 2
    rows.append(dict(check="vqgan", precision=precision,
                     codes_equal=float(np.mean(np.asarray(codes) == io["indices"])),
                     decoded_max_abs_error=float(np.abs(np.asarray(decoded) - expected).max())))
  return rows


def determinism_rows(io, model, params) -> list[dict]:
  """Two sampler calls with the same key: identical codes (bit-exact replay) or not."""
  clip = jnp.asarray(np.repeat(io["c"], 16, axis=0))
  runs = [np.asarray(sample(model, params, clip, jax.random.key(7), latent_shape=(8, 8)))
          for _ in range(2)]
  return [dict(check="sampler, same key twice (32 images, 8 steps)",
               identical=bool(np.array_equal(*runs)),
               tokens_differing=int(np.sum(runs[0] != runs[1])))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reference", type=Path, default=ROOT / "tests" / "fixtures")
  parser.add_argument("--name", default="numerics")
  args = parser.parse_args()
  if not (args.reference / "paella_v1_tiny.pt").is_file():
    raise SystemExit(f"reference fixtures not found in {args.reference} (--reference DIR)")
  print(f"device: {jax.devices()[0].device_kind}")
  io = np.load(args.reference / "paella_v1_tiny_io.npz")
  model, params = paella_v1_from_torch(args.reference / "paella_v1_tiny.pt")
  rows = (paella_rows(io, model, params) + typical_rows(args.reference)
          + vqgan_rows(args.reference) + determinism_rows(io, model, params))
  for row in rows:
    print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()))
  write_results(args.name, rows)


if __name__ == "__main__":
  main()
