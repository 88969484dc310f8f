"""What every command line of the project shares: expected failures as one line.

A bad argument, input file or checkpoint raises ValueError or OSError (FileNotFoundError,
FileExistsError, ...) with a message naming the problem. `run_main` prints that message as
`error: ...` on stderr and exits with status 2; `--debug` anywhere on the command line shows the
traceback instead. Any other exception is a bug and keeps its traceback. Commands whose flags
another library parses (absl's `app.run`: train, aot) wrap their main in `one_line_errors`, and
load their config file by path with `config_path` and `make_configs_importable` (a config may
import the configs beside it); `run_absl` does all of that, and turns a flag absl refuses or a
`--config.FIELD=...` override of a field the config lacks into one line too. Both runners also
take `--compilation-cache DIR|off` anywhere on the command line and set up the persistent XLA
compilation cache (on by default; paella_jax/compilation_cache.py) before anything compiles.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, Sequence

EXPECTED_ERRORS = (ValueError, OSError)
DEBUG_FLAG = "--debug"


def one_line(error: BaseException) -> str:
  """An exception's message as one line (its lines joined), or its type's name when empty."""
  return " ".join(line.strip() for line in str(error).splitlines()) or type(error).__name__


@contextlib.contextmanager
def one_line_errors(debug: bool = False) -> Iterator[None]:
  """Turns an expected failure inside the block into one line `error: ...` on stderr (a
  message of several lines joined) and exit status 2; with `debug` it propagates unchanged."""
  try:
    yield
  except EXPECTED_ERRORS as e:
    if debug:
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    raise SystemExit(2) from None


def _with_compilation_cache(argv: list[str]) -> list[str]:
  """Configures the compilation cache from argv's --compilation-cache (or its default) and
  returns argv without that option."""
  from paella_jax import compilation_cache
  argv, setting = compilation_cache.pop_flag(argv)
  compilation_cache.configure(setting)
  return argv


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> object:
  """Calls `main(argv)` (argv without --debug and --compilation-cache); expected failures exit
  2 with one line."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = DEBUG_FLAG in argv
  with one_line_errors(debug):
    argv = _with_compilation_cache(argv)
    return main([a for a in argv if a != DEBUG_FLAG])


def config_path(argv: list[str]) -> str | None:
  """The --config file named in argv (without a `:override` suffix), if any."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def make_configs_importable(path: str) -> None:
  """A config file in a package of your own (a folder with __init__.py, e.g. myconfigs/) may
  import its siblings by that package's name (`from myconfigs import base`): makes the folder
  above the package importable. Not for a package inside another one: the shipped configs
  import each other as `paella_jax.configs`, and paella_jax/ itself never goes on sys.path."""
  package = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(package)
  if (os.path.isfile(os.path.join(package, "__init__.py"))
      and not os.path.isfile(os.path.join(root, "__init__.py"))):
    if root not in sys.path:
      sys.path.insert(0, root)


def run_absl(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
  """`absl.app.run(main)` with one-line errors: a bad flag, an override of a config field that
  does not exist and an expected failure of `main` print `error: ...` and exit 2 (--debug: the
  traceback). argv includes the program name; the command defines its own --debug flag."""
  from absl import app, flags
  argv = list(sys.argv if argv is None else argv)
  path = config_path(argv)
  if path:
    make_configs_importable(path)

  def parse(args: list[str]) -> list[str]:
    try:
      return flags.FLAGS(args)
    except flags.Error as e:
      raise ValueError(str(e)) from e
    except (AttributeError, KeyError) as e:  # ml_collections: --config.FIELD that is not there
      overrides = " ".join(a for a in args if a.startswith("--config."))
      name, *hint = _key_error_lines(e)
      raise ValueError(" ".join([f"the config has no field {name} ({overrides})", *hint])) from e

  with one_line_errors(DEBUG_FLAG in argv):
    argv = _with_compilation_cache(argv)
    app.run(main, argv=argv, flags_parser=parse)


def _key_error_lines(error: BaseException) -> list[str]:
  """The lines of the first KeyError in an exception's chain: the key, then ml_collections'
  "Did you mean ..." hint if any."""
  while error is not None and not isinstance(error, KeyError):
    error = error.__context__
  text = str(error.args[0]) if error is not None and error.args else "?"
  return [line.strip() for line in text.splitlines() if line.strip()]
