"""The jit sampler against the original PyTorch sampler (dome272/Paella), same weights and settings.

The original's code is NOT part of this project: point `--original` at a directory holding its
`modules.py` and `utils.py` (Paella at commit b1f88ef; modules.py from e5e3ba1 where b1f88ef has
none), e.g.

  git clone https://github.com/dome272/Paella && cd Paella
  mkdir /tmp/paella_original && git show b1f88ef:utils.py > /tmp/paella_original/utils.py
  git show e5e3ba1:modules.py > /tmp/paella_original/modules.py
  python benchmarks/bench_original.py --original /tmp/paella_original

On a GPU, `--device cuda --precision bf16` runs the original there under
torch.autocast(bfloat16) against the jit sampler in bfloat16 on the same GPU (the paper model:
`--codes 8192 --c-hidden 1280 --latent 32 --batch 1` and `--batch 64`; token sampling only).

A random-init original `DenoiseUNet` is converted with `paella_v1_from_torch`, so both samplers
run the same weights (checked: one forward pass of each on the same input). Both run T steps with
classifier-free guidance and typical filtering; the two are timed alternately, repeat after
repeat, so that both see the same load on a shared machine. Reports the medians and the median
of the paired ratios (original time / jit time), for each PyTorch thread count.

`--family v3` compares Paella v3 the same way: `--original` then holds v3's
`src_distributed/modules.py` (commit e1ab72b) as modules.py; a random-init `Paella` (a scaled-down
configuration, every weight random) is converted with `paella_v3_from_torch`, and the original v3
sampling algorithm (`src_distributed/utils.py::sample`, whose module imports its whole training
stack, transcribed in tests/torch_reference_v3.py) runs against the jit sampler: T steps, cfg
and temperature schedules, renoising to the initial noise, no typical filtering.

  mkdir /tmp/paella_v3 && git show e1ab72b:src_distributed/modules.py > /tmp/paella_v3/modules.py
  python benchmarks/bench_original.py --family v3 --original /tmp/paella_v3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

from common import load_average, parse_ints, time_calls, write_results

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.convert import paella_v1_from_torch, paella_v3_from_torch
from paella_jax.models.paella import count_params
from paella_jax.sampling import sample


def import_original(path: str):
  """The original's `modules` and `utils` from `path`. utils.py imports torchvision and
  webdataset at the top for its data loader, which `sample` does not use: empty stand-ins are
  registered for whichever of them is not installed."""
  for name in ("torchvision", "webdataset", "webdataset.handlers"):
    try:
      __import__(name)
    except ImportError:
      stub = types.ModuleType(name)
      stub.warn_and_continue = None
      sys.modules[name] = stub
  sys.path.insert(0, path)
  import modules
  import utils
  return modules, utils


def setup_v1(args, torch):
  """(original sampler, jit sampler, settings, parameter count, forward max |diff|) for v1."""
  modules, utils = import_original(args.original)
  torch.manual_seed(0)
  device = torch.device(args.device)
  torch_model = modules.DenoiseUNet(num_labels=args.codes, c_hidden=args.c_hidden).eval()
  model, params = paella_v1_from_torch(torch_model.state_dict())
  torch_model = torch_model.to(device)
  if args.precision == "bf16":
    model = model.clone(dtype=jnp.bfloat16)  # float32 weights, bf16 compute: as autocast
  params = jax.device_put(params)
  batch, size = args.batch, (args.latent, args.latent)
  clip_np = np.random.default_rng(0).standard_normal((batch, model.c_clip), dtype=np.float32)
  clip_torch, clip = torch.from_numpy(clip_np).to(device), jnp.asarray(clip_np)
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16")

  tokens = np.random.default_rng(1).integers(0, args.codes, (batch, *size))
  r = np.full((batch,), 0.5, np.float32)
  with torch.inference_mode(), autocast():
    expected = torch_model(torch.from_numpy(tokens).to(device), clip_torch,
                           torch.from_numpy(r).to(device)).float().cpu().numpy()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32), clip,
                               jnp.asarray(r)))

  def run_original():
    with autocast():
      codes = utils.sample(torch_model, clip_torch, T=args.steps, size=size,
                           classifier_free_scale=args.cfg, typical_filtering=True,
                           typical_mass=args.typical_mass, renoise_steps=args.steps - 1)
    if device.type == "cuda":
      torch.cuda.synchronize()  # time the work, not its launch
    return codes

  def run_jit():
    return sample(model, params, clip, jax.random.key(0), steps=args.steps, cfg=args.cfg,
                  typical_mass=args.typical_mass, latent_shape=size).block_until_ready()

  settings = dict(c_hidden=args.c_hidden, steps=args.steps, cfg=args.cfg,
                  typical_mass=args.typical_mass, device=args.device, precision=args.precision)
  return run_original, run_jit, settings, count_params(params), _max_diff(got, expected)


# The scaled-down v3 of `--family v3`: the release's block layout with narrower levels.
V3_BENCH = dict(c_in=64, c_out=64, c_r=64, patch_size=2, c_cond=256, c_hidden=[128, 256, 256],
                nhead=[-1, 4, 4], blocks=[1, 2, 1], level_config=["CT", "CTA", "CTA"],
                clip_embd=256, byt5_embd=256, clip_seq_len=4, kernel_size=3, dropout=0.0)


def setup_v3(args, torch):
  """As `setup_v1`, for Paella v3 with ByT5 (`--byt5-length` tokens) and CLIP text conditioning
  and the empty prompt's (one ByT5 token) as uncond."""
  from tests.torch_reference_v3 import reference_sample
  sys.path.insert(0, args.original)
  import modules
  torch.manual_seed(0)
  torch_model = modules.Paella(num_labels=args.codes, **V3_BENCH).eval()
  with torch.no_grad():  # every weight random (the original zero-initialises some)
    for p in torch_model.parameters():
      p.copy_(torch.randn_like(p) * 0.1)
  model, params = paella_v3_from_torch(torch_model.state_dict(), nhead=V3_BENCH["nhead"])
  params = jax.device_put(params)
  batch, size = args.batch, (args.latent, args.latent)
  rng = np.random.default_rng(0)
  cond = dict(byt5=rng.standard_normal((batch, args.byt5_length, 256), dtype=np.float32),
              clip=rng.standard_normal((batch, 256), dtype=np.float32))
  uncond = dict(byt5=np.repeat(rng.standard_normal((1, 1, 256), dtype=np.float32), batch, 0),
                clip=np.repeat(rng.standard_normal((1, 256), dtype=np.float32), batch, 0))
  as_torch = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}
  tokens = rng.integers(0, args.codes, (batch, *size))
  r = np.full((batch,), 0.5, np.float32)
  with torch.inference_mode():
    expected = torch_model(torch.from_numpy(tokens), torch.from_numpy(r),
                           **as_torch(cond)).numpy()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32),
                               jnp.asarray(r), **cond))
  cfg, temperature = (args.cfg, args.cfg), (0.7, 0.3)

  def run_original():
    with torch.inference_mode():
      return reference_sample(torch_model, as_torch(cond), as_torch(uncond), (batch, *size),
                              args.steps, temperature, cfg, args.steps)

  def run_jit():
    return sample(model, params, cond, jax.random.key(0), steps=args.steps, cfg=cfg,
                  temperature=temperature, typical_mass=None, latent_shape=size,
                  uncond=uncond).block_until_ready()

  settings = dict(c_hidden=V3_BENCH["c_hidden"][0], steps=args.steps, cfg=args.cfg,
                  typical_mass=None, byt5_length=args.byt5_length)
  return run_original, run_jit, settings, count_params(params), _max_diff(got, expected)


def _max_diff(nhwc, nchw) -> float:
  return float(np.abs(nhwc - nchw.transpose(0, 2, 3, 1)).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--original", required=True,
                      help="directory with the original's modules.py and utils.py (v3: "
                      "modules.py)")
  parser.add_argument("--family", choices=("v1", "v3"), default="v1")
  parser.add_argument("--byt5-length", type=int, default=32, help="v3: ByT5 tokens per prompt")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--latent", type=int, default=16, help="latent side (16: 16x16 tokens)")
  parser.add_argument("--codes", type=int, default=1024)
  parser.add_argument("--c-hidden", type=int, default=256)
  parser.add_argument("--steps", type=int, default=None, help="default v1: 8, v3: 12")
  parser.add_argument("--cfg", type=float, default=None, help="default v1: 5, v3: 8")
  parser.add_argument("--typical-mass", type=float, default=0.2)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--torch-threads", type=parse_ints, default=[1, os.cpu_count()],
                      help="PyTorch intra-op thread counts to try (on a loaded machine one "
                      "thread is often the original's fastest)")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="where the original runs (v1); the jit sampler runs on JAX's default "
                      "backend, the same GPU when there is one")
  parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                      help="bf16 (v1): the original under torch.autocast(bfloat16), the jit "
                      "model with bfloat16 compute; both keep float32 weights")
  parser.add_argument("--name", default=None, help="default original_vs_jit[_v3]")
  args = parser.parse_args()
  v3 = args.family == "v3"
  if v3 and (args.device != "cpu" or args.precision != "fp32"):
    parser.error("--device cuda and --precision bf16 compare Paella v1 (--family v1)")
  args.steps = args.steps or (12 if v3 else 8)
  args.cfg = args.cfg if args.cfg is not None else (8.0 if v3 else 5.0)
  args.name = args.name or ("original_vs_jit_v3" if v3 else "original_vs_jit")

  import torch
  run_original, run_jit, settings, n_params, forward_diff = (setup_v3 if v3 else setup_v1)(
      args, torch)
  print(f"{n_params:,} parameters; max |jax - torch| of one forward: {forward_diff:.2e}")
  compile_time = time_calls(run_jit, 1)["first_s"]
  rows, all_times = [], {}
  for threads in args.torch_threads:
    torch.set_num_threads(threads)
    run_original()
    times = {"original": [], "jit": []}
    for _ in range(args.repeats):
      for name, fn in (("original", run_original), ("jit", run_jit)):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    ratios = [o / j for o, j in zip(times["original"], times["jit"])]
    row = dict(family=args.family, batch=args.batch, latent=args.latent, codes=args.codes,
               **settings, params=n_params, torch=torch.__version__, torch_threads=threads,
               original_ms=1e3 * statistics.median(times["original"]),
               jit_ms=1e3 * statistics.median(times["jit"]),
               original_min_ms=1e3 * min(times["original"]), jit_min_ms=1e3 * min(times["jit"]),
               ratio_median=statistics.median(ratios),
               ratio_of_mins=min(times["original"]) / min(times["jit"]),
               jit_compile_s=compile_time, forward_max_abs_diff=forward_diff,
               load_1min=load_average())
    print(f"torch threads {threads}: original {row['original_ms']:.0f} ms, jit "
          f"{row['jit_ms']:.0f} ms (median of {args.repeats}); jit is {row['ratio_median']:.2f}x "
          f"faster (paired median), {row['ratio_of_mins']:.2f}x (best of each); "
          f"load {row['load_1min']:.1f}")
    rows.append(row)
    all_times[threads] = times
  write_results(args.name, rows, times_s=all_times)


if __name__ == "__main__":
  main()
