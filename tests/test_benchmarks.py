"""The one-shot accelerator suite (benchmarks/device_suite.sh), dry-run on a CPU with tiny presets.

Timings are not asserted (benchmarks report); what is checked is that every step runs, the
results come back packed, and the numerics checks hold on this backend.
"""

import json
import os
import subprocess
import sys
import tarfile

import jax
import pytest

from tests.conftest import FIXTURES, ROOT

STEPS = 12
RESULT_FILES = ("numerics", "sampling_tiny_bfloat16", "sampling_tiny_float32",
                "sampling_tiny_bfloat16_sweep", "sampling_tiny_v3_bfloat16", "train_tiny_bfloat16",
                "train_tiny_float32", "depthwise_tiny_bfloat16", "typical_filter",
                "vqgan_tiny_bfloat16", "vqgan_tiny_float32", "serve_tiny")


@pytest.mark.slow
def test_device_suite_dry_run_on_cpu(tmp_path):
  out = tmp_path / "suite"
  env = dict(os.environ, JAX_PLATFORMS="cpu", SUITE_PRESET="tiny", SUITE_PRESET_V3="tiny_v3",
             SUITE_VQGAN="vqgan_tiny",
             SUITE_TYPICAL_SHAPES="256x1024", SUITE_REFERENCE=str(FIXTURES), PYTHON="python3")
  # A budget no step reaches on a loaded CPU either (about 5 minutes alone on 2 cores).
  subprocess.run(["bash", "benchmarks/device_suite.sh", "1800", str(out)], cwd=ROOT, env=env,
                 check=True, timeout=2400)
  log = (out / "suite.log").read_text()
  assert log.count(": exit 0 after") == STEPS, log

  unpacked = tmp_path / "unpacked"
  with tarfile.open(out / "results.tar.gz") as archive:
    archive.extractall(unpacked, filter="data")
  results = {path.stem.removesuffix("_cpu"): json.loads(path.read_text())
             for path in (unpacked / "results").glob("*_cpu.json")}
  assert set(RESULT_FILES) <= set(results), sorted(results)

  numerics = {row["check"] + row.get("dtype", "") + row.get("precision", ""): row
              for row in results["numerics"]["rows"]}
  for conditioning in ("pooled", "spatial"):
    assert numerics[f"paella logits, {conditioning}float32highest"]["max_abs_error"] < 1e-4
    assert numerics[f"paella logits, {conditioning}bfloat16default"]["argmax_agreement"] > 0.5
  assert numerics["typical filter, original's fixture (6 cases)"]["equal_cases"] == 6
  assert numerics["typical filter vs sort, 4096 x 8192 random rows"]["equal"]
  assert numerics["vqganhighest"]["codes_equal"] == 1.0
  assert numerics["sampler, same key twice (32 images, 8 steps)"]["identical"]

  assert all(row["max_abs_difference"] < 1e-1 for row in results["depthwise_tiny_bfloat16"]["rows"])
  assert all(row[f"{form}_equal"] for row in results["typical_filter"]["rows"]
             for form in ("argsort", "flat", "blocked", "4ary", "16ary"))
  v3 = results["sampling_tiny_v3_bfloat16"]["rows"]
  assert [row["batch"] for row in v3] == [1, 64] and all(row["steps"] == 12 for row in v3)
  assert all(0 < row["memory_temp_bytes"] and row["images_per_s"] > 0 for row in v3)
  sweep = sorted(row["batch"] for row in results["sampling_tiny_bfloat16_sweep"]["rows"])
  assert sweep == [8, 16, 32, 128, 256]
  assert results["sampling_tiny_bfloat16_sweep"]["breakdown"]
  serve = {row["run"]: row for row in results["serve_tiny"]["rows"]}
  assert sorted(serve) == ["batched, pad", "batched, split", "one at a time"]
  assert all(row["requests"] == 16 * 16 for row in serve.values())  # none lost
  assert serve["one at a time"]["sampler_calls"] == 256
  assert all(serve[run]["sampler_calls"] < 256 for run in ("batched, pad", "batched, split"))
  assert all(x > 0 for x in results["serve_tiny"]["ceiling"].values())
  summary = (out / "summary.md").read_text()
  assert "| serving: batching speedup over one request per call (tiny model) |" in summary
  assert "| batch-1 latency (ms), bf16 |" in summary and "not measured" in summary  # CPU: no MFU


@pytest.mark.slow  # minutes on 2 cores: CI runs it in the slow tier
@pytest.mark.parametrize("script", ["bench_sampling", "bench_train"])
def test_a_batch_that_does_not_fit_is_recorded_and_the_run_goes_on(script, tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  monkeypatch.setenv("PAELLA_BENCH_RESULTS", str(tmp_path))
  import common
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  bench = __import__(script)
  measure = bench.measure_batch

  def measure_or_run_out(*args):
    if 4 in args:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 17 GiB")
    return measure(*args)

  monkeypatch.setattr(bench, "measure_batch", measure_or_run_out)
  monkeypatch.setattr(sys, "argv", [script, "--batch-sizes", "4,2", "--repeats", "1"]
                      + (["--steps", "1"] if script == "bench_train" else []))
  bench.main()
  name = "sampling_tiny_float32" if script == "bench_sampling" else "train_tiny_float32"
  rows = json.loads((tmp_path / f"{name}_cpu.json").read_text())["rows"]
  assert [row["batch"] for row in rows] == [4, 2]
  assert rows[0]["error"] == "out of memory" and rows[1]["images_per_s"] > 0


def test_bench_train_times_the_lora_step(tmp_path, monkeypatch):
  """--lora RANK times the LoRA step (adapters trained, a frozen base argument) and records it
  apart from full training."""
  monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
  import common
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  bench = __import__("bench_train")
  monkeypatch.setattr(sys, "argv", ["bench_train", "--batch-sizes", "4", "--repeats", "1",
                                    "--steps", "1", "--lora", "2"])
  bench.main()
  (row,) = json.loads((tmp_path / "train_tiny_float32_lora_cpu.json").read_text())["rows"]
  assert row["lora_rank"] == 2 and row["step_ms"] > 0 and row["gflops_per_step"] > 0
