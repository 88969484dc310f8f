"""Shared pieces of the benchmarks: model presets, timing, environment record, result files.

Every benchmark writes `benchmarks/results/<name>_<backend>.json` (environment + rows) and
`<name>_<backend>.csv` (rows only); `PAELLA_BENCH_RESULTS=DIR` writes them to DIR instead.
Timings are medians of repeated calls after a warm-up call that compiles (its seconds are
printed the moment it returns, so a run cut short still shows what compiling cost); the
1-minute load average is recorded with every row, because CPU numbers from a shared machine are
only comparable at similar load. Every benchmark uses the persistent compilation cache as the
commands do (`--compilation-cache DIR|off`, $PAELLA_JAX_CACHE; paella_jax/compilation_cache.py):
a rerun reads its programs back instead of compiling them, so pass `--compilation-cache off` to
measure a cold compile.
"""

from __future__ import annotations

import csv
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("PAELLA_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402  (after the path set-up, so `configs` and `paella_jax` import from ROOT)
import jaxlib  # noqa: E402

from paella_jax import compilation_cache  # noqa: E402
from paella_jax.init_from_shapes import init_from_shapes  # noqa: E402

sys.argv, _cache_setting = compilation_cache.pop_flag(sys.argv)
CACHE = compilation_cache.configure(_cache_setting)

# name -> (config module in configs/, model overrides, latent shape, VQGAN config or None).
# "cpu_compare" is the setting of the comparison with the original PyTorch sampler: 1024 codes,
# c_hidden 256, the paper's depths, 16x16 latents.
PRESETS = {
    "tiny": ("tiny", {}, None, "vqgan_tiny"),
    "paella_v1": ("paella_v1", {}, None, "vqgan_sber_f8"),
    "cpu_compare": ("paella_v1", dict(num_labels=1024, c_hidden=256), (16, 16), None),
    "paella_v3": ("paella_v3", {}, None, "vqgan_paella_f4"),
    "tiny_v3": ("tiny_v3", {}, None, None),
}


def load_preset(name: str, dtype: str = "float32"):
  """(config, vqgan_config or None) of a preset; `dtype` is the token predictor's compute dtype."""
  module, overrides, latent_shape, vqgan = PRESETS[name]
  config = importlib.import_module(f"configs.{module}").get_config()
  config.model.update(dtype=dtype, **overrides)
  if latent_shape is not None:
    config.latent_shape = latent_shape
  vqgan_config = importlib.import_module(f"configs.{vqgan}").get_config() if vqgan else None
  return config, vqgan_config


def random_vqgan(vqgan_config, seed: int = 0):
  """(module, params) of a VQGAN config with random weights (drawn from shapes)."""
  from paella_jax.models.vqgan import init_params, vqgan_from_config
  vq = vqgan_from_config(vqgan_config.model)
  params = init_from_shapes(lambda key: init_params(vq, key, vqgan_config.image_size),
                            jax.random.key(seed))
  return vq, params


def load_average() -> float:
  """The 1-minute load average (other jobs share the CPU cores)."""
  return os.getloadavg()[0]


def time_calls(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
  """Times `fn()` (which must block until its result is ready): first call (compilation
  included) and the median and minimum of `repeats` further calls, in seconds."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  print(f"  first call {first:.2f} s", flush=True)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return dict(first_s=first, median_s=statistics.median(times), min_s=min(times),
              repeats=repeats, load_1min=load_average())


def environment() -> dict[str, Any]:
  """What the numbers depend on: hardware, versions, flags, load."""
  device = jax.devices()[0]
  cpu = platform.processor()
  try:
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
               if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return dict(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      jax=jax.__version__, jaxlib=jaxlib.__version__,
      python=platform.python_version(), backend=jax.default_backend(),
      device_kind=device.device_kind, device_count=jax.device_count(), cpu=cpu,
      cpu_count=os.cpu_count(), load_avg=os.getloadavg(), compilation_cache=CACHE,
      flags={k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "TF_CPP"))},
      argv=sys.argv)


def write_results(name: str, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
  """Writes results/<name>_<backend>.json (environment, `extra`, rows) and the .csv of the rows
  (the backend suffix keeps CPU and GPU results of one benchmark side by side)."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  name = f"{name}_{jax.default_backend()}"
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps(dict(environment=environment(), **extra, rows=list(rows)), indent=1,
                             default=float) + "\n")
  if rows:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fields)
      writer.writeheader()
      writer.writerows(rows)
  print(f"wrote {path} and {path.with_suffix('.csv')}")
  return path


def parse_ints(text: str) -> list[int]:
  """'1,2,4' -> [1, 2, 4] (argparse type)."""
  return [int(x) for x in text.split(",") if x]
