"""Raw image-caption sources, cut into shards of random-access examples.

    source = open_source("data/laion/{00000..00099}.tar")      # or a folder, an index, "tfds:NAME"
    for shard in source.shards:                                 # the units `prepare` distributes
      example = shard[i]                                        # RawExample(key, image, caption)

Kinds:
  folder  a directory of images (jpg, jpeg, png, webp, bmp, gif, tif, tiff), searched
          recursively, each captioned by a sidecar with the same stem: NAME.txt (text) or
          NAME.json ({"caption": ...}); or an index file (.jsonl, .csv, .parquet) with an image
          path column (relative to the index) and a caption column.
  tar     webdataset shards as img2dataset writes them: members KEY.jpg|png|webp|... plus
          KEY.txt and/or KEY.json in .tar files (a file, a directory of them, a glob or a
          {000..099} range). Read with the standard library.
  tfds    "tfds:NAME" through `tfds.data_source` (ArrayRecord-backed datasets need no TensorFlow).
  memory  (N, H, W, 3) uint8 arrays and captions (`memory_source`, from Python only).

An example whose image or caption is absent comes out with None in its place; `decode` turns
that (and every other unusable input) into a counted skip.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re
import tarfile
from typing import Any, Callable, Sequence

import numpy as np

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTS = ("txt", "json")
PATH_COLUMNS = ("image", "file", "path", "file_name", "filename", "url_local")
CAPTION_COLUMNS = ("caption", "text", "prompt")


@dataclasses.dataclass(frozen=True)
class RawExample:
  """key: a stable unique name; image: encoded bytes or a uint8 array (tfds), None if absent;
  caption: bytes, str or None."""
  key: str
  image: bytes | np.ndarray | None
  caption: bytes | str | None


class Shard:
  """A named, random-access run of examples: `len(shard)`, `shard[i] -> RawExample`. `load`
  builds the example list on first use (tar shards read their headers then), so listing a big
  source stays cheap and each process only indexes the shards it takes."""

  def __init__(self, name: str, load: Callable[[], Sequence[Callable[[], RawExample]]]):
    self.name, self._load, self._examples = name, load, None

  def _items(self):
    if self._examples is None:
      self._examples = self._load()
    return self._examples

  def __len__(self) -> int:
    return len(self._items())

  def __getitem__(self, i: int) -> RawExample:
    return self._items()[i]()


@dataclasses.dataclass
class Source:
  kind: str
  description: str
  shards: list[Shard]


def _chunked(prefix: str, n: int, shard_size: int,
             example: Callable[[int], Callable[[], RawExample]]) -> list[Shard]:
  """Examples 0..n-1 as shards PREFIX-00000, ... of `shard_size`, each listed on first use."""
  return [Shard(f"{prefix}-{lo // shard_size:05d}",
                lambda lo=lo: [example(j) for j in range(lo, min(lo + shard_size, n))])
          for lo in range(0, n, shard_size)]


def _image_and_caption(found: dict[str, Any]) -> tuple[Any, Any]:
  """The image (first of IMAGE_EXTS) and caption (.txt, else .json) among one stem's files."""
  return (next((found[e] for e in IMAGE_EXTS if e in found), None),
          found.get("txt") or found.get("json"))


# ------------------------------------------------------------------------------------- folder

def _read(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def _file_example(key: str, image_path: str | None, caption: Callable[[], bytes | str | None]):
  return lambda: RawExample(key, _read(image_path) if image_path else None, caption())


def _scan_folder(root: str) -> list[tuple[str, str | None, str | None]]:
  """(key, image path or None, caption path or None) for every stem under `root`, sorted."""
  stems: dict[str, dict[str, str]] = {}
  for directory, _, files in os.walk(root):
    for name in files:
      stem, _, ext = name.rpartition(".")
      if stem and ext.lower() in IMAGE_EXTS + CAPTION_EXTS:
        key = os.path.relpath(os.path.join(directory, stem), root)
        stems.setdefault(key, {})[ext.lower()] = os.path.join(directory, name)
  out = []
  for key in sorted(stems):
    out.append((key, *_image_and_caption(stems[key])))
  return out


def _index_rows(path: str, path_column: str | None, caption_column: str | None):
  """Rows of a .jsonl / .csv / .parquet index as dicts."""
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
  elif path.endswith(".csv"):
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f))
  elif path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    rows = pq.read_table(path).to_pylist()
  else:
    raise ValueError(f"index {path}: expected .jsonl, .csv or .parquet")
  if not rows:
    raise ValueError(f"index {path} is empty")
  columns = set(rows[0])

  def pick(given, candidates, what):
    name = given or next((c for c in candidates if c in columns), None)
    if name not in columns:
      raise ValueError(f"index {path}: no {what} column (looked for "
                       f"{given or ', '.join(candidates)}; has {sorted(columns)})")
    return name
  return rows, pick(path_column, PATH_COLUMNS, "image path"), pick(caption_column,
                                                                   CAPTION_COLUMNS, "caption")


def folder_source(path: str, shard_size: int = 10_000, path_column: str | None = None,
                  caption_column: str | None = None) -> Source:
  """A folder with sidecar captions, or an index file (see the module doc)."""
  if os.path.isdir(path):
    entries = [_file_example(key, image, lambda c=caption: _read(c) if c else None)
               for key, image, caption in _scan_folder(path)]
  elif os.path.isfile(path):
    rows, path_col, caption_col = _index_rows(path, path_column, caption_column)
    root = os.path.dirname(os.path.abspath(path))
    entries = []
    for row in rows:
      relative = row.get(path_col)
      image = os.path.join(root, str(relative)) if relative else None
      caption = row.get(caption_col)
      entries.append(_file_example(str(relative), image, lambda c=caption: c))
  else:
    raise FileNotFoundError(f"folder source not found: {path}")
  if not entries:
    raise ValueError(f"no images or captions found in {path}")
  return Source("folder", os.path.abspath(path),
                _chunked("folder", len(entries), shard_size, entries.__getitem__))


# ---------------------------------------------------------------------------------------- tar

def expand_paths(pattern: str, suffix: str = ".tar") -> list[str]:
  """A file, a directory (its *`suffix` files), a glob, or a brace range like
  "shards/{00000..00099}.tar" -> sorted existing paths."""
  if os.path.isdir(pattern):
    paths = glob.glob(os.path.join(pattern, f"*{suffix}"))
  else:
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match:
      lo, hi = match.group(1), match.group(2)
      paths = [pattern[:match.start()] + str(i).zfill(len(lo)) + pattern[match.end():]
               for i in range(int(lo), int(hi) + 1)]
      missing = [p for p in paths if not os.path.isfile(p)]
      if missing:
        raise FileNotFoundError(f"{len(missing)} shards of {pattern} are missing, "
                                f"e.g. {missing[0]}")
    else:
      paths = glob.glob(pattern)
  if not paths:
    raise FileNotFoundError(f"no {suffix} files match {pattern}")
  return sorted(paths)


def _pread(path: str, offset: int, size: int) -> bytes:
  """Thread- and fork-safe positional read."""
  fd = os.open(path, os.O_RDONLY)
  try:
    return os.pread(fd, size, offset)
  finally:
    os.close(fd)


def index_tar(path: str) -> list[Callable[[], RawExample]]:
  """Reads the member headers of one webdataset tar: one example per key (the member name up
  to the first dot of its basename). A truncated tar yields the examples before the damage (a
  member cut short reads as a corrupt image)."""
  groups: dict[str, dict[str, tuple[int, int]]] = {}
  try:
    with tarfile.open(path, "r:") as tar:
      while True:
        try:
          member = tar.next()
        except (tarfile.ReadError, EOFError, OSError):
          break
        if member is None:
          break
        if not member.isfile():
          continue
        directory, base = os.path.split(member.name)
        stem, dot, ext = base.partition(".")
        if dot:
          key = os.path.join(directory, stem)
          groups.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
  except tarfile.ReadError:
    pass  # not even a first header: no examples (the manifest shows an empty shard)
  name = os.path.basename(path)

  def example(key, found):
    image, caption = _image_and_caption(found)
    return lambda: RawExample(f"{name}/{key}", _pread(path, *image) if image else None,
                              _pread(path, *caption) if caption else None)
  return [example(key, groups[key]) for key in sorted(groups)]


def tar_source(pattern: str) -> Source:
  """Webdataset tar shards; one Shard per tar file, named after it."""
  paths = expand_paths(pattern)
  shards = [Shard(os.path.splitext(os.path.basename(p))[0], lambda p=p: index_tar(p))
            for p in paths]
  return Source("tar", pattern, shards)


# --------------------------------------------------------------------------------------- tfds

def tfds_source(name: str, split: str = "train", data_dir: str | None = None,
                image_key: str = "image", caption_key: str = "caption",
                shard_size: int = 10_000, data_source: Any = None) -> Source:
  """A tfds dataset through `tfds.data_source(name, split=split)` (or an equivalent random-access
  `data_source` of dicts). `caption_key` may be a path "captions/text" into nested features;
  a list of captions takes the first."""
  if data_source is None:
    try:
      import tensorflow_datasets as tfds
    except ImportError:
      raise ImportError("tfds sources need tensorflow-datasets: pip install "
                        "tensorflow-datasets") from None
    data_source = tfds.data_source(name, split=split, data_dir=data_dir)

  def get(record, path):
    for part in path.split("/"):
      if not isinstance(record, dict) or part not in record:
        return None
      record = record[part]
    if isinstance(record, (list, tuple, np.ndarray)) and not isinstance(record, (bytes, str)):
      if isinstance(record, np.ndarray) and record.dtype != object:
        return record
      return record[0] if len(record) else None
    return record

  def example(i):
    def read():
      record = data_source[i]
      return RawExample(f"{name}/{split}/{i}", get(record, image_key), get(record, caption_key))
    return read
  return Source("tfds", f"{name}:{split}",
                _chunked("tfds", len(data_source), shard_size, example))


# ------------------------------------------------------------------------------------- memory

def memory_source(images: np.ndarray, captions: Sequence[str], shard_size: int = 10_000,
                  name: str = "memory") -> Source:
  """Images already in memory, (N, H, W, 3) uint8, with N captions (e.g. a generated dataset)."""
  if len(images) != len(captions):
    raise ValueError(f"{len(images)} images but {len(captions)} captions")
  n = len(images)

  def example(i):
    return lambda: RawExample(f"{name}/{i}", images[i], captions[i])
  return Source("memory", f"{n} in-memory images", _chunked(name, n, shard_size, example))


# ------------------------------------------------------------------------------------- choose

def open_source(spec: str, shard_size: int = 10_000, split: str = "train",
                data_dir: str | None = None, image_key: str = "image",
                caption_key: str | None = None, path_column: str | None = None) -> Source:
  """"tfds:NAME", "tar:PATTERN", "folder:PATH", or a path whose kind is detected: .tar files
  (or a directory or pattern of them) -> tar, an index file or a directory -> folder."""
  kind, sep, rest = spec.partition(":")
  if sep and kind in ("tfds", "tar", "folder"):
    spec = rest
  elif spec.endswith(".tar") or (os.path.isdir(spec) and glob.glob(os.path.join(spec, "*.tar"))):
    kind = "tar"
  else:
    kind = "folder"
  if kind == "tfds":
    return tfds_source(spec, split, data_dir, image_key, caption_key or "caption", shard_size)
  if kind == "tar":
    return tar_source(spec)
  return folder_source(spec, shard_size, path_column, caption_key)
