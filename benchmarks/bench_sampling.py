"""Sampling latency and throughput against batch size (the paper's Fig. 7), VQGAN decoding included.

For each batch size: the jit sampler (`paella_jax.sampling.sample`: T steps, classifier-free
guidance, typical filtering for v1) and the jit VQGAN decode of its tokens, timed separately and
back to back (`total`); compilation is reported on its own (first call minus a steady call). A
batch size that does not fit in the device's memory is recorded as such and the run goes on.
Weights and conditioning are random (speed does not depend on their values); Paella v3 presets
condition on `--byt5-length` ByT5 states and a CLIP text embedding, with guidance against an
unconditional batch-1 conditioning, as the original sampler does. Sampler settings default to the
family's (v1: 8 steps, cfg 5, typical 0.2; v3: 12 steps, cfg 8, no typical filtering).

`--memory` adds the compiled sampler's memory (arguments, temporaries, outputs, peak; XLA's
memory analysis of the executable; where XLA refuses a program larger than the chip, the
temporaries it asked for) to every row; `--memory-only` compiles from abstract shapes
without running or allocating the weights, on this backend or, with `--topology v5e:2x2`, for
one chip of a TPU topology (libtpu, ahead of time). With `--breakdown B` (v1), one sampler step
at batch B is split into its parts, each jit-compiled alone: the guided forward, the typical
filter and the draw + renoise.

  python benchmarks/bench_sampling.py --config tiny
  python benchmarks/bench_sampling.py --config cpu_compare --batch-sizes 1,8,32 --breakdown 8
  python benchmarks/bench_sampling.py --config paella_v1 --batch-sizes 1,8,64,256 --dtype bfloat16
  python benchmarks/bench_sampling.py --config paella_v3 --batch-sizes 1,64 --dtype bfloat16 --memory
  python benchmarks/bench_sampling.py --config paella_v3 --batch-sizes 64 --dtype bfloat16 \
    --param-dtype bfloat16 --memory-only --topology v5e:2x2
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from common import (PRESETS, ROOT, init_from_shapes, load_preset, parse_ints, random_vqgan,
                    time_calls, write_results)

import jax
import jax.numpy as jnp

from paella_jax.hardware import GiB, out_of_memory
from paella_jax.models import paella, paella_v3
from paella_jax.models.paella import count_params
from paella_jax.noise import add_noise
from paella_jax import families
from paella_jax.sampling import draw_codes, guided_logits, sample, typical_filter


def model_family(config):
  """The model module of a config: paella_jax.models.paella (v1) or .paella_v3."""
  return paella_v3 if config.get("kind") == "paella_v3" else paella


def build_model(config, abstract: bool = False, seed: int = 0):
  """(model, params) with random weights drawn from shapes (printing the seconds it took);
  `abstract`: params as ShapeDtypeStructs (no memory)."""
  family = model_family(config)
  model = family.build_model(config.model)
  init = lambda key: family.init_params(model, key, config.latent_shape)
  key = jax.random.key(seed)
  if abstract:
    return model, jax.eval_shape(init, key)
  start = time.perf_counter()
  params = jax.block_until_ready(init_from_shapes(init, key))
  print(f"random weights drawn from shapes in {time.perf_counter() - start:.1f} s", flush=True)
  return model, params


def init_models(config, vqgan_config, seed: int = 0):
  """(model, params, vq or None, vq_params or None) with random weights."""
  model, params = build_model(config, seed=seed)
  if vqgan_config is None:
    return model, params, None, None
  vq, vq_params = random_vqgan(vqgan_config, seed + 1)
  return model, params, vq, vq_params


def conditioning(model, batch: int, byt5_length: int):
  """Random conditioning of `batch` rows and the sampler's other inputs for it: v1 CLIP
  (B, c_clip) and {}; v3 dict(byt5 (B, L, byt5_embd), clip (B, clip_embd)) and
  {"uncond": the same entries with batch 1}."""
  keys = jax.random.split(jax.random.key(batch), 4)
  if not isinstance(model, paella_v3.PaellaV3):
    return jax.random.normal(keys[0], (batch, model.c_clip)), {}
  rows = lambda n, k: dict(byt5=jax.random.normal(keys[k], (n, byt5_length, model.byt5_embd)),
                           clip=jax.random.normal(keys[k + 1], (n, model.clip_embd)))
  return rows(batch, 0), {"uncond": rows(1, 2)}


def compiled_memory(model, params, batch: int, latent_shape, settings: dict, byt5_length: int,
                    device=None) -> dict:
  """The compiled sampler's per-device memory at `batch` (XLA's memory analysis), in bytes.

  `params` may be abstract (ShapeDtypeStructs); `device` (e.g. a TPU topology's abstract device)
  compiles for that device instead of this backend's default one.
  """
  cond, extra = jax.eval_shape(lambda: conditioning(model, batch, byt5_length))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  args = (params, cond, extra, rng)
  if device is not None:
    placed = jax.sharding.SingleDeviceSharding(device)
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placed), args)
  def run(p, c, e, k):
    with jax.ensure_compile_time_eval():  # the sampler's host-side set-up stays on the host
      return sample(model, p, c, k, latent_shape=latent_shape, **e, **settings)

  try:
    memory = jax.jit(run).lower(*args).compile().memory_analysis()
  except jax.errors.JaxRuntimeError as error:  # XLA refuses a program larger than the HBM
    needed = re.search(r"HLO temporaries \(([\d.]+)G\)", str(error))
    if not out_of_memory(error) or not needed:
      raise
    print(f"B={batch:4d}  compiled sampler: does not fit, {needed[1]} GiB of temporaries")
    return dict(memory_fits=False, memory_temp_bytes=int(float(needed[1]) * GiB))
  row = dict(memory_fits=True, memory_arguments_bytes=memory.argument_size_in_bytes,
             memory_temp_bytes=memory.temp_size_in_bytes,
             memory_output_bytes=memory.output_size_in_bytes)
  row["memory_peak_bytes"] = (row["memory_arguments_bytes"] + row["memory_temp_bytes"]
                              + row["memory_output_bytes"] - memory.alias_size_in_bytes)
  size = lambda b: f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2 ** 20:.1f} MiB"
  print(f"B={batch:4d}  compiled sampler: arguments {size(row['memory_arguments_bytes'])}  "
        f"temporaries {size(row['memory_temp_bytes'])}  peak {size(row['memory_peak_bytes'])}")
  return row


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
                  repeats: int, byt5_length: int = 64) -> dict:
  """Sampling (and decoding) times at one batch size, compilation separately; prints a line."""
  cond, extra = conditioning(model, batch, byt5_length)
  rng = jax.random.key(0)
  run_sampler = lambda: sample(model, params, cond, rng, latent_shape=latent_shape, **extra,
                               **settings)
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


def number_or_pair(text: str):
  """'5' -> 5.0, '8,4' -> (8.0, 4.0), 'off' -> None (argparse type of --cfg, --typical-mass)."""
  if text == "off":
    return None
  values = tuple(float(x) for x in text.split(","))
  return values[0] if len(values) == 1 else values


def sampler_settings(config, args) -> dict:
  """The family's sampler defaults (steps, cfg, typical mass, temperature) with the arguments
  given on top."""
  defaults = families.of_config(config).sampler_defaults
  settings = {k: defaults[k] for k in ("steps", "cfg", "typical_mass", "temperature")}
  settings.update({k: getattr(args, k) for k in ("steps", "cfg", "typical_mass") if hasattr(args, k)})
  return settings


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--batch-sizes", type=parse_ints, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
  parser.add_argument("--steps", type=int, default=argparse.SUPPRESS, help="default: the family's")
  parser.add_argument("--cfg", type=number_or_pair, default=argparse.SUPPRESS,
                      help="a weight, 'start,end' or 'off' (default: the family's)")
  parser.add_argument("--typical-mass", type=number_or_pair, default=argparse.SUPPRESS,
                      help="a mass or 'off' (default: the family's)")
  parser.add_argument("--byt5-length", type=int, default=64,
                      help="v3: ByT5 tokens of the conditioning")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of the token predictor and the VQGAN")
  parser.add_argument("--param-dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the token predictor's weights")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--memory", action="store_true",
                      help="also record the compiled sampler's memory at every batch size")
  parser.add_argument("--memory-only", action="store_true",
                      help="only compile (abstract weights, nothing run) and record its memory")
  parser.add_argument("--topology", default=None,
                      help="with --memory-only: compile for one chip of this TPU topology")
  parser.add_argument("--breakdown", type=int, default=0, metavar="B",
                      help="also split one sampler step at batch B into its parts (v1)")
  parser.add_argument("--name", default=None, help="result file name (default sampling_CONFIG_DTYPE)")
  args = parser.parse_args()
  if args.topology and not args.memory_only:
    parser.error("--topology needs --memory-only (nothing runs on an abstract TPU)")

  config, vqgan_config = load_preset(args.config, args.dtype)
  config.model.param_dtype = args.param_dtype
  v3 = config.get("kind") == "paella_v3"
  if args.breakdown and v3:
    parser.error("--breakdown splits Paella v1's sampler step; it has no v3 form")
  settings = sampler_settings(config, args)
  latent_shape = tuple(config.latent_shape)
  name = args.name or f"sampling_{args.config}_{args.dtype}"

  if args.memory_only:
    model, params = build_model(config, abstract=True)
    device = None
    if args.topology:
      sys.path.insert(0, str(ROOT))
      from paella_jax.aot import tpu_devices
      device = tpu_devices(args.topology)[0]
    backend = device.device_kind if device is not None else jax.devices()[0].device_kind
    print(f"{args.config}: {count_params(params):,} parameters, latents {latent_shape}, "
          f"{args.dtype} compute, {args.param_dtype} weights, compiled for {backend}")
    rows = [dict(config=args.config, dtype=args.dtype, param_dtype=args.param_dtype,
                 batch=batch, compiled_for=backend, **settings,
                 **compiled_memory(model, params, batch, latent_shape, settings, args.byt5_length,
                                   device)) for batch in args.batch_sizes]
    write_results(name, rows, config=args.config, parameters=count_params(params),
                  latent_shape=latent_shape, num_labels=model.num_labels)
    return

  model, params, vq, vq_params = init_models(config, vqgan_config)
  if vq is not None:
    vq = vq.clone(dtype=jnp.dtype(args.dtype))
  print(f"{args.config}: {count_params(params):,} parameters, latents {latent_shape}, "
        f"{model.num_labels} codes, {args.dtype}, {jax.devices()[0].device_kind}")
  decode = None if vq is None else jax.jit(
      lambda p, codes: vq.apply({"params": p}, codes, method="decode_codes"))

  extra = dict(config=args.config, parameters=count_params(params), latent_shape=latent_shape,
               num_labels=model.num_labels, decoding=decode is not None)
  rows = []
  for batch in args.batch_sizes:
    row = dict(config=args.config, dtype=args.dtype, param_dtype=args.param_dtype, batch=batch,
               **settings)
    try:
      row.update(measure_batch(model, params, batch, latent_shape, settings, decode, vq_params,
                               args.repeats, args.byt5_length))
      if args.memory:
        row.update(compiled_memory(model, params, batch, latent_shape, settings, args.byt5_length))
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
