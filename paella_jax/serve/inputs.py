"""The uploaded images the server keeps, so that the sidecars of served images can name them.

Only the images of a request that was prepared without error are written (`InputStore.put`),
as content-addressed PNGs (the first 32 hex digits of their SHA-256): each is written under a
unique temporary name and renamed into place, so concurrent uploads of one image never share a
file. The folder is bounded: files older than `max_age_s` and, past `quota_bytes`, the least
recently stored ones are removed (a sidecar naming a removed image can no longer be replayed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time

log = logging.getLogger("paella_jax.serve")
TEMPORARY_PREFIX = ".upload-"


class InputStore:
  """A folder of content-addressed PNGs with a size quota and an age limit."""

  def __init__(self, folder: str, quota_bytes: int, max_age_s: float,
               cleanup_every_s: float = 10.0):
    self.folder, self.quota_bytes, self.max_age_s = folder, quota_bytes, max_age_s
    self.cleanup_every_s = cleanup_every_s
    self._lock = threading.Lock()
    self._last_cleanup = -float("inf")
    os.makedirs(folder, exist_ok=True)
    self.cleanup()

  def put(self, png: bytes) -> str:
    """Stores PNG bytes (once per content) and returns the file's absolute path."""
    path = os.path.join(os.path.abspath(self.folder),
                        hashlib.sha256(png).hexdigest()[:32] + ".png")
    if os.path.exists(path):
      os.utime(path)  # stored again: the most recent, the last removed
    else:
      descriptor, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=".part",
                                               dir=self.folder)
      try:
        with os.fdopen(descriptor, "wb") as f:
          f.write(png)
        os.replace(temporary, path)
      except BaseException:
        os.unlink(temporary)
        raise
    if time.monotonic() - self._last_cleanup >= self.cleanup_every_s:
      self.cleanup()
    return path

  def cleanup(self) -> None:
    """Removes stored files past the age limit, then the oldest past the quota, and temporary
    files an interrupted write left (older than a minute)."""
    with self._lock:
      self._last_cleanup = time.monotonic()
      now, files = time.time(), []
      with os.scandir(self.folder) as entries:
        for entry in entries:
          temporary = entry.name.startswith(TEMPORARY_PREFIX)
          if not entry.is_file() or not (temporary or entry.name.endswith(".png")):
            continue  # only what the store writes
          stat = entry.stat()
          if now - stat.st_mtime > (60 if temporary else self.max_age_s):
            _remove(entry.path)
          elif not temporary:
            files.append((stat.st_mtime, stat.st_size, entry.path))
      total = sum(size for _, size, _ in files)
      for _, size, path in sorted(files):
        if total <= self.quota_bytes:
          break
        _remove(path)
        total -= size


def _remove(path: str) -> None:
  try:
    os.unlink(path)
  except FileNotFoundError:  # removed by another cleanup
    pass
  except OSError as e:
    log.warning("could not remove %s: %s", path, e)
