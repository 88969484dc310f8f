"""What every command line of the project shares: expected failures as one line.

A bad argument, input file or checkpoint raises ValueError or OSError (FileNotFoundError,
FileExistsError, ...) with a message naming the problem. `run_main` prints that message as
`error: ...` on stderr and exits with status 2; `--debug` anywhere on the command line shows the
traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

EXPECTED_ERRORS = (ValueError, OSError)
DEBUG_FLAG = "--debug"


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> object:
  """Calls `main(argv)` (argv without --debug); expected failures exit 2 with one line."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = DEBUG_FLAG in argv
  argv = [a for a in argv if a != DEBUG_FLAG]
  try:
    return main(argv)
  except EXPECTED_ERRORS as e:
    if debug:
      raise
    message = str(e) or type(e).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None
