"""Sampling latency and throughput against batch size (the paper's Fig. 7), VQGAN decoding included.

For each batch size: the jit sampler (`paella_jax.sampling.sample`: T steps, classifier-free
guidance, typical filtering) and the jit VQGAN decode of its tokens, timed separately and back to
back (`total`); compilation is reported on its own (first call minus a steady call). A batch
size that does not fit in the device's memory is recorded as such and the run goes on. Weights
are random (speed does not depend on their values). With `--breakdown B`, one sampler step at
batch B is split into its parts, each jit-compiled alone: the guided forward, the typical filter
and the draw + renoise.

  python benchmarks/bench_sampling.py --config tiny
  python benchmarks/bench_sampling.py --config cpu_compare --batch-sizes 1,8,32 --breakdown 8
  python benchmarks/bench_sampling.py --config paella_v1 --batch-sizes 1,8,64,256 --dtype bfloat16
"""

from __future__ import annotations

import argparse

from common import (PRESETS, load_preset, parse_ints, random_vqgan, time_calls,
                    write_results)

import jax
import jax.numpy as jnp

from paella_jax.hardware import out_of_memory
from paella_jax.models.paella import build_model, count_params, init_params
from paella_jax.noise import add_noise
from paella_jax.sampling import draw_codes, guided_logits, sample, typical_filter


def init_models(config, vqgan_config, seed: int = 0):
  """(model, params, vq or None, vq_params or None) with random weights."""
  model = build_model(config.model)
  params = jax.jit(lambda key: init_params(model, key, config.latent_shape))(jax.random.key(seed))
  if vqgan_config is None:
    return model, params, None, None
  vq, vq_params = random_vqgan(vqgan_config, seed + 1)
  return model, params, vq, vq_params


def breakdown(model, params, batch: int, latent_shape, settings: dict, repeats: int) -> list[dict]:
  """Per-step milliseconds of the sampler's parts at one batch size, each jit-compiled alone."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.randint(keys[0], (batch, *latent_shape), 0, model.num_labels, jnp.int32)
  clip = jax.random.normal(keys[1], (batch, model.c_clip))
  r = jnp.full((batch,), 0.5)
  cfg = jnp.float32(settings["cfg"])
  forward = jax.jit(lambda p, x, c, r: guided_logits(model, p, x, c, r, cfg))
  logits = forward(params, x, clip, r)
  filt = jax.jit(typical_filter)
  filtered = filt(logits, settings["typical_mass"])

  @jax.jit
  def draw(rng, logits, x):
    new_x = draw_codes(rng, logits)
    return add_noise(rng, new_x, r, model.num_labels, x)[0]

  parts = {
      "forward (cond+uncond)": lambda: forward(params, x, clip, r).block_until_ready(),
      "typical filter": lambda: filt(logits, settings["typical_mass"]).block_until_ready(),
      "draw + renoise": lambda: draw(keys[2], filtered, x).block_until_ready(),
  }
  timings = {name: (time_calls(fn, repeats), 1) for name, fn in parts.items()}
  whole = time_calls(lambda: sample(model, params, clip, keys[2], latent_shape=latent_shape,
                                    **settings).block_until_ready(), repeats)
  timings["whole sampler / steps"] = (whole, settings["steps"])
  rows = [dict(part=name, batch=batch, ms_per_step=1e3 * t["median_s"] / per,
               min_ms_per_step=1e3 * t["min_s"] / per, load_1min=t["load_1min"])
          for name, (t, per) in timings.items()]
  step_ms = rows[-1]["ms_per_step"]
  for row in rows:
    row["share_of_step"] = row["ms_per_step"] / step_ms
    print(f"  {row['part']:24s} {row['ms_per_step']:9.2f} ms/step  {100 * row['share_of_step']:5.1f}%")
  return rows


def measure_batch(model, params, batch: int, latent_shape, settings: dict, decode, vq_params,
                  repeats: int) -> dict:
  """Sampling (and decoding) times at one batch size, compilation separately; prints a line."""
  clip = jax.random.normal(jax.random.key(batch), (batch, model.c_clip))
  rng = jax.random.key(0)
  run_sampler = lambda: sample(model, params, clip, rng, latent_shape=latent_shape, **settings)
  row = {}

  def timed(part, fn):
    t = time_calls(fn, repeats)  # its first call compiles
    row.update({f"{part}_ms": 1e3 * t["median_s"], f"{part}_min_ms": 1e3 * t["min_s"],
                f"{part}_compile_s": max(t["first_s"] - t["median_s"], 0.0),
                "load_1min": t["load_1min"]})

  timed("sample", lambda: run_sampler().block_until_ready())
  if decode is not None:
    tokens = run_sampler()
    timed("decode", lambda: decode(vq_params, tokens).block_until_ready())
    timed("total", lambda: decode(vq_params, run_sampler()).block_until_ready())
  total = row.get("total_ms", row["sample_ms"])
  row.update(images_per_s=1e3 * batch / total, ms_per_image=total / batch)
  print(f"B={batch:4d}  sample {row['sample_ms']:9.1f} ms  "
        + (f"decode {row['decode_ms']:8.1f} ms  total {total:9.1f} ms  " if decode else "")
        + f"{row['images_per_s']:8.2f} img/s  compile {row['sample_compile_s']:.1f} s  "
        f"load {row['load_1min']:.1f}")
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--batch-sizes", type=parse_ints, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--cfg", type=float, default=5.0)
  parser.add_argument("--typical-mass", type=float, default=0.2)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of the token predictor and the VQGAN")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--breakdown", type=int, default=0, metavar="B",
                      help="also split one sampler step at batch B into its parts")
  parser.add_argument("--name", default=None, help="result file name (default sampling_CONFIG_DTYPE)")
  args = parser.parse_args()

  config, vqgan_config = load_preset(args.config, args.dtype)
  model, params, vq, vq_params = init_models(config, vqgan_config)
  if vq is not None:
    vq = vq.clone(dtype=jnp.dtype(args.dtype))
  latent_shape = tuple(config.latent_shape)
  settings = dict(steps=args.steps, cfg=args.cfg, typical_mass=args.typical_mass)
  print(f"{args.config}: {count_params(params):,} parameters, latents {latent_shape}, "
        f"{model.num_labels} codes, {args.dtype}, {jax.devices()[0].device_kind}")
  decode = None if vq is None else jax.jit(
      lambda p, codes: vq.apply({"params": p}, codes, method="decode_codes"))

  name = args.name or f"sampling_{args.config}_{args.dtype}"
  extra = dict(config=args.config, parameters=count_params(params), latent_shape=latent_shape,
               num_labels=model.num_labels, decoding=decode is not None)
  rows = []
  for batch in args.batch_sizes:
    row = dict(config=args.config, dtype=args.dtype, batch=batch, **settings)
    try:
      row.update(measure_batch(model, params, batch, latent_shape, settings, decode, vq_params,
                               args.repeats))
    except jax.errors.JaxRuntimeError as error:  # a batch too large for the device: a result too
      if not out_of_memory(error):
        raise
      row["error"] = "out of memory"
      print(f"B={batch:4d}  out of device memory")
    rows.append(row)
    write_results(name, rows, **extra)  # after every batch size: a killed run keeps its rows

  if args.breakdown:
    print(f"breakdown of one step at B={args.breakdown}:")
    extra["breakdown"] = breakdown(model, params, args.breakdown, latent_shape, settings,
                                   args.repeats)
    write_results(name, rows, **extra)


if __name__ == "__main__":
  main()
