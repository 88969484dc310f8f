"""The persistent compilation cache every command sets up (paella_jax/compilation_cache.py):
written by one process, read back by the next, `off` disables it, a bad directory only warns."""

import json
import os
import subprocess
import sys

import pytest

from paella_jax import compilation_cache
from tests.conftest import ROOT

# A command's main that compiles one program and reports the cache's hits and misses.
PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from paella_jax.cli import run_main
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
def main(argv):
  value = jax.jit(lambda x: jnp.sin(x) @ x.T + 1)(jnp.ones((32, 32)))
  print("RESULT " + json.dumps(dict(
      value=float(value.sum()), argv=argv,
      hits=events.count("/jax/compilation_cache/cache_hits"),
      misses=events.count("/jax/compilation_cache/cache_misses"))))
run_main(main)
"""


def run_command(*args, env_cache=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # cache even this small program
  env.pop(compilation_cache.ENV, None)
  if env_cache is not None:
    env[compilation_cache.ENV] = str(env_cache)
  out = subprocess.run([sys.executable, "-c", PROGRAM, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.split("RESULT ", 1)[1]), out.stderr


def test_second_process_reads_what_the_first_wrote(tmp_path):
  cache = tmp_path / "xla"
  first, _ = run_command("--compilation-cache", cache, "rest")
  written = sorted(os.listdir(cache))
  assert written and first["hits"] == 0 and first["misses"] > 0
  assert first["argv"] == ["rest"]  # the option is not passed on to the command
  second, _ = run_command(f"--compilation-cache={cache}")
  assert second["hits"] > 0 and second["misses"] == 0
  assert sorted(os.listdir(cache)) == written  # nothing compiled anew
  assert second["value"] == first["value"]


def test_environment_variable_and_off(tmp_path):
  cache = tmp_path / "from_env"
  run_command(env_cache=cache)
  assert os.listdir(cache)
  other = tmp_path / "off"
  result, _ = run_command("--compilation-cache", "off", env_cache=other)
  assert not other.exists() and result["hits"] == result["misses"] == 0


def test_corrupt_entries_and_unusable_directories_only_warn(tmp_path):
  cache = tmp_path / "xla"
  expected, _ = run_command("--compilation-cache", cache)
  for name in os.listdir(cache):
    (cache / name).write_bytes(b"not a compiled program")
  result, stderr = run_command("--compilation-cache", cache)
  assert result["value"] == expected["value"] and result["hits"] == 0
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result, stderr = run_command("--compilation-cache", blocker / "xla")
  assert result["value"] == expected["value"]
  assert "compilation cache disabled" in stderr


def test_resolution_order(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.resolve() == str(tmp_path / "paella_jax" / "xla")
  monkeypatch.setenv(compilation_cache.ENV, "gs://bucket/cache")
  assert compilation_cache.resolve() == "gs://bucket/cache"
  assert compilation_cache.resolve("off") is None
  assert compilation_cache.pop_flag(["a", "--compilation-cache", "d", "b"]) == (["a", "b"], "d")
  with pytest.raises(ValueError, match="--compilation-cache needs"):
    compilation_cache.pop_flag(["--compilation-cache"])
