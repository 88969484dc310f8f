"""Typical filtering: the original's full sort against the sort-free filter, same results.

Jit-compiled versions on the same logits, each checked equal (bit for bit) to the sort:
  argsort   the original algorithm (stable argsort, cumsum, scatter back), in jax.numpy
  flat      the bisection threshold over all rows at once (what accelerators run)
  blocked   `typical_filter` itself (on CPUs: rows in cache-sized blocks through `lax.map`)
  4ary, 16ary  candidates for accelerators: the same search with fewer passes over the data

  python benchmarks/bench_typical.py
  python benchmarks/bench_typical.py --shapes 2048x1024,2048x8192,128x8192
"""

from __future__ import annotations

import argparse

from common import load_average, time_calls, write_results

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.sampling import _typical_filter_rows, typical_filter, typical_scores


def argsort_filter(logits: jax.Array, mass: float) -> jax.Array:
  """The original Paella typical filter (min_tokens 1) with a stable sort."""
  score, p = typical_scores(logits)
  order = jnp.argsort(score, axis=-1, stable=True)
  sorted_score = jnp.take_along_axis(score, order, axis=-1)
  cumsum = jnp.cumsum(jnp.take_along_axis(p, order, axis=-1), axis=-1)
  last = jnp.minimum(jnp.sum(cumsum < mass, axis=-1, keepdims=True), logits.shape[-1] - 1)
  remove_sorted = sorted_score > jnp.take_along_axis(sorted_score, last, axis=-1)
  remove_sorted = remove_sorted.at[..., 0].set(False)
  remove = jnp.zeros_like(remove_sorted).at[
      jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
  return jnp.where(remove, -jnp.inf, logits)


def kary_passes(arity: int, width: int = 2 ** 31) -> int:
  """Passes of `kary_filter`'s search until the bracket (lo, hi] holds one bit pattern."""
  passes = 0
  while width > 1:
    step = max(width // arity, 1)
    width = max(step, width - (arity - 1) * step)
    passes += 1
  return passes


def kary_filter(logits: jax.Array, mass: float, arity: int) -> jax.Array:
  """A candidate for accelerators: the same threshold as the bisection (min_tokens 1, all rows at
  once), searched `arity`-ary: arity - 1 thresholds per pass (sibling sums XLA can fuse into
  one read of the scores and probabilities), 16 passes at arity 4 and 8 at 16 instead of 31.
  Fewer passes over the data pays where a pass is bandwidth-bound (GPUs); on CPUs it was slower
  (docs/benchmarks.md, section 3)."""
  score, probs = typical_scores(logits)
  bits = jax.lax.bitcast_convert_type(score, jnp.int32)

  def body(_, bounds):
    lo, hi = bounds
    step = jnp.maximum((hi - lo) // arity, 1)
    thresholds = [jnp.minimum(lo + j * step, hi) for j in range(1, arity)]  # ascending
    reached = [jnp.sum(jnp.where(bits <= t, probs, 0.0), -1, keepdims=True) >= mass
               for t in thresholds]
    new_lo, new_hi = lo, hi  # the highest unreached and the lowest reached threshold
    for t, r in zip(thresholds, reached):
      new_hi = jnp.where(r & (t < new_hi), t, new_hi)
      new_lo = jnp.where(~r & (t > new_lo), t, new_lo)
    return new_lo, new_hi

  lo = jnp.full(score.shape[:-1] + (1,), -1, jnp.int32)
  _, hi = jax.lax.fori_loop(0, kary_passes(arity), body,
                            (lo, jnp.max(bits, axis=-1, keepdims=True)))
  return jnp.where(score > jax.lax.bitcast_convert_type(hi, jnp.float32), -jnp.inf, logits)


def parse_shapes(text: str) -> list[tuple[int, int]]:
  """'2048x1024,128x8192' -> [(2048, 1024), (128, 8192)] (rows x codes)."""
  return [tuple(int(n) for n in shape.split("x")) for shape in text.split(",")]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", type=parse_shapes, default=[(2048, 1024), (2048, 8192)],
                      help="rows x codes, comma separated (2048 rows = 8 images of 16x16 tokens)")
  parser.add_argument("--mass", type=float, default=0.2)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--name", default="typical_filter")
  args = parser.parse_args()

  versions = {
      "argsort": jax.jit(argsort_filter),
      "flat": jax.jit(lambda logits, mass: _typical_filter_rows(logits, jnp.float32(mass), 1)),
      "blocked": jax.jit(typical_filter),
      "4ary": jax.jit(lambda logits, mass: kary_filter(logits, mass, 4)),
      "16ary": jax.jit(lambda logits, mass: kary_filter(logits, mass, 16)),
  }
  rows = []
  for n_rows, codes in args.shapes:
    logits = jax.random.normal(jax.random.key(codes), (n_rows, codes)) * 3.0
    reference = np.asarray(versions["argsort"](logits, args.mass))
    row = dict(rows=n_rows, codes=codes, mass=args.mass)
    for name, fn in versions.items():
      out = np.asarray(fn(logits, args.mass))
      row[f"{name}_equal"] = bool(np.array_equal(out, reference))
      row[f"{name}_ms"] = 1e3 * time_calls(
          lambda: fn(logits, args.mass).block_until_ready(), args.repeats)["median_s"]
    row["speedup_blocked_vs_argsort"] = row["argsort_ms"] / row["blocked_ms"]
    row["speedup_blocked_vs_flat"] = row["flat_ms"] / row["blocked_ms"]
    row["load_1min"] = load_average()
    rows.append(row)
    print(f"{n_rows}x{codes}: " + "  ".join(f"{k} {row[f'{k}_ms']:.1f} ms"
                                            + ("" if row[f"{k}_equal"] else " (DIFFERS)")
                                            for k in versions) + f"  load {row['load_1min']:.1f}")
  write_results(args.name, rows)


if __name__ == "__main__":
  main()
