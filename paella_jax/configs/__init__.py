"""The configs shipped with paella-jax: one `get_config()` file (ml_collections) per module.

Commands that take `--config` accept a preset's name (`--config tiny`, `--config demo`,
`--config paella_v1`: the file of that name here) or the path of a config file. A config file of
your own builds on the presets by importing them:

    from paella_jax.configs import tiny

    def get_config():
      c = tiny.get_config()
      c.train.total_steps = 1000
      return c

The repository's top-level `configs` is a symlink to this folder, so `--config configs/tiny.py`
and `import configs.tiny` work from a clone too.
"""

from __future__ import annotations

import importlib.util
import os

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))


def presets() -> list[str]:
  """The names of the shipped configs, sorted."""
  return sorted(name[:-3] for name in os.listdir(PRESETS_DIR)
                if name.endswith(".py") and not name.startswith("_"))


def config_file(spec: str) -> str:
  """A config's file: `spec` itself when it is a file, else the preset named `spec` ("tiny"
  or "tiny.py"). Raises FileNotFoundError for a missing path, ValueError for an unknown name."""
  if os.path.isfile(spec):
    return spec
  name = spec[:-3] if spec.endswith(".py") else spec
  if name in presets():
    return os.path.join(PRESETS_DIR, f"{name}.py")
  if os.sep in spec or spec.endswith(".py"):
    base = os.path.basename(name)
    hint = f" (the preset is named without a path: --config {base})" if base in presets() else ""
    raise FileNotFoundError(f"config file not found: {spec}{hint}")
  raise ValueError(f"unknown config {spec!r}: not a file, nor a preset ({', '.join(presets())})")


def load(spec: str):
  """The ConfigDict of `get_config()` in a preset or a config file (see `config_file`)."""
  path = config_file(spec)
  module_spec = importlib.util.spec_from_file_location(
      f"paella_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def with_config_file(argv: list[str]) -> list[str]:
  """argv with the value of `--config NAME` / `--config=NAME` replaced by its file (see
  `config_file`); an `:ARG` suffix, which ml_collections passes to get_config, is kept."""
  def resolved(value: str) -> str:
    spec, colon, suffix = value.partition(":")
    return config_file(spec) + colon + suffix
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return [*argv[:i], "--config=" + resolved(arg.split("=", 1)[1]), *argv[i + 1:]]
    if arg == "--config" and i + 1 < len(argv):
      return [*argv[:i + 1], resolved(argv[i + 1]), *argv[i + 2:]]
  return list(argv)
