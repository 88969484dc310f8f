"""The persistent XLA compilation cache that every command and benchmark uses.

A compiled program is written to the cache directory and read back by any later process that
compiles the same program (same shapes, settings, backend and jax version), so a second run of
a command skips its compiles. This is jax's own cache (`jax_compilation_cache_dir`); on GPUs jax
also keeps XLA's autotuning results there.

Where it lives, first match wins:
  --compilation-cache DIR | off     on any command line (`off` disables it)
  $PAELLA_JAX_CACHE                 a directory, or `off`
  $XDG_CACHE_HOME/paella_jax/xla    default; ~/.cache/paella_jax/xla without XDG_CACHE_HOME
A URL such as gs://bucket/cache is passed to jax as it is (a cache shared by a pod's hosts).
Only programs that took at least MIN_COMPILE_SECONDS to compile are written, so the many tiny
programs of a run do not fill it; $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS overrides that.
A local directory that cannot be created is a warning, never a failure: the run goes on
without the cache (jax itself warns and recompiles on an unreadable entry).
"""

from __future__ import annotations

import os
import warnings

FLAG = "--compilation-cache"
ENV = "PAELLA_JAX_CACHE"
OFF = "off"
MIN_COMPILE_SECONDS = 1.0


def default_directory() -> str:
  """$XDG_CACHE_HOME/paella_jax/xla, or ~/.cache/paella_jax/xla."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "paella_jax", "xla")


def resolve(setting: str | None = None) -> str | None:
  """The cache location for a --compilation-cache value (None: $PAELLA_JAX_CACHE, then the
  default); None when the cache is off."""
  setting = setting or os.environ.get(ENV) or default_directory()
  return None if setting == OFF else setting


def configure(setting: str | None = None) -> str | None:
  """Points jax's persistent compilation cache at `resolve(setting)` (call it before the first
  compile); returns the location in use, or None when off or unusable."""
  import jax
  location = resolve(setting)
  if location is not None and "://" not in location:
    location = os.path.abspath(os.path.expanduser(location))
    try:
      os.makedirs(location, exist_ok=True)
      if not os.access(location, os.W_OK):
        raise PermissionError(f"{location} is not writable")
    except OSError as e:
      warnings.warn(f"compilation cache disabled: {e}", stacklevel=2)
      location = None
  jax.config.update("jax_compilation_cache_dir", location)
  if location is not None and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return location


def pop_flag(argv: list[str]) -> tuple[list[str], str | None]:
  """(argv without `--compilation-cache VALUE` / `--compilation-cache=VALUE`, VALUE or None)."""
  rest, value, args = [], None, iter(argv)
  for arg in args:
    if arg == FLAG:
      value = next(args, None)
      if value is None:
        raise ValueError(f"{FLAG} needs a directory or '{OFF}'")
    elif arg.startswith(FLAG + "="):
      value = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  return rest, value
