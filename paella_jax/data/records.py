"""Pre-encoded datasets on disk: ArrayRecord shards of (VQ tokens, CLIP embedding, caption) and
the manifest that describes them.

    DIR/manifest.json              format, shapes, counts, skips per reason, encoders, config
    DIR/SHARD.array_record         one record per example (see RecordFormat)
    DIR/SHARD.json                 that shard's summary; its presence marks the shard finished:
                                   counts, skips, and "read": what the shard held (sha256 of
                                   every [key, image bytes, caption bytes] in order, and those
                                   of a few "probes" by position) for a rerun to check
    DIR/NAME.tmp.HOST.PID          a file being written (renamed into place when complete)

A record is the raw little-endian bytes of tokens (h*w, `token_dtype`), then the embedding
(c_clip, float32), then the caption in UTF-8: fixed offsets, parsed without copies.
Paella v3's records (format FORMAT_V3, `V3RecordFormat`) add the CLIP image embedding and the
caption's ByT5 input: its byte ids, or the ByT5 encoder's hidden states.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import socket

import numpy as np

from paella_jax import families

FORMAT = families.PAELLA_V1.records_format
FORMAT_V3 = families.PAELLA_V3.records_format
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for global shuffle


@dataclasses.dataclass(frozen=True)
class RecordFormat:
  latent_shape: tuple[int, int]
  c_clip: int
  token_dtype: str = "int16"  # int16 holds codebooks of up to 32768 codes

  @classmethod
  def for_codebook(cls, latent_shape, c_clip: int, num_labels: int) -> "RecordFormat":
    return cls(tuple(latent_shape), c_clip, "int16" if num_labels <= 32768 else "int32")

  @property
  def _token_dtype(self) -> np.dtype:
    return np.dtype(self.token_dtype).newbyteorder("<")

  @property
  def _split(self) -> tuple[int, int]:
    t = int(np.prod(self.latent_shape)) * np.dtype(self.token_dtype).itemsize
    return t, t + 4 * self.c_clip

  def encode(self, tokens: np.ndarray, clip: np.ndarray, caption: str) -> bytes:
    """tokens (h, w) int, clip (c_clip,) float, caption -> one record."""
    return (np.asarray(tokens, self._token_dtype).tobytes() + np.asarray(clip, "<f4").tobytes()
            + caption.encode("utf-8"))

  def decode(self, record: bytes) -> dict[str, np.ndarray]:
    """One record -> {"tokens": (h, w) int32, "clip": (c_clip,) float32} (caption dropped)."""
    t, c = self._split
    if len(record) < c:
      raise ValueError(f"record of {len(record)} bytes is shorter than the {c} bytes of "
                       f"tokens {self.latent_shape} {self.token_dtype} + clip ({self.c_clip},)")
    tokens = np.frombuffer(record, self._token_dtype, t // self._token_dtype.itemsize)
    tokens = tokens.reshape(self.latent_shape)
    return {"tokens": tokens.astype(np.int32),
            "clip": np.frombuffer(record, "<f4", self.c_clip, offset=t).astype(np.float32)}

  def caption(self, record: bytes) -> str:
    return record[self._split[1]:].decode("utf-8")


@dataclasses.dataclass(frozen=True)
class V3RecordFormat:
  """Paella v3's record: tokens (h*w, `token_dtype`), CLIP text then image embedding
  (2 x c_clip float32), n (uint32), the caption's ByT5 input, the caption in UTF-8.

  byt5 = "ids": n ByT5 byte ids (uint16, </s> included, see `byt5_tokenizer`), 2 bytes per
  caption byte; "states": the encoder's n x byt5_dim last hidden states as bfloat16.
  """
  latent_shape: tuple[int, int]
  c_clip: int
  token_dtype: str = "int16"
  byt5: str = "ids"
  byt5_dim: int = 0  # "states" only

  def __post_init__(self):
    if self.byt5 not in ("ids", "states"):
      raise ValueError(f"byt5 must be 'ids' or 'states', got {self.byt5!r}")

  @property
  def _fixed(self) -> int:
    """Bytes before the ByT5 input: tokens, two embeddings, n."""
    tokens = int(np.prod(self.latent_shape)) * np.dtype(self.token_dtype).itemsize
    return tokens + 8 * self.c_clip + 4

  @property
  def _row(self) -> int:
    """Bytes per ByT5 position."""
    return 2 if self.byt5 == "ids" else 2 * self.byt5_dim

  def encode(self, tokens: np.ndarray, clip: np.ndarray, clip_image: np.ndarray,
             byt5: np.ndarray, caption: str) -> bytes:
    """tokens (h, w) int; clip, clip_image (c_clip,) float; byt5 (n,) ids or (n, byt5_dim)
    states (any float dtype, stored as bfloat16) -> one record."""
    import ml_dtypes
    payload = (np.asarray(byt5, "<u2") if self.byt5 == "ids" else
               np.asarray(byt5, np.float32).astype(ml_dtypes.bfloat16).view("<u2"))
    return b"".join([np.asarray(tokens, np.dtype(self.token_dtype).newbyteorder("<")).tobytes(),
                     np.asarray(clip, "<f4").tobytes(), np.asarray(clip_image, "<f4").tobytes(),
                     np.uint32(len(payload)).astype("<u4").tobytes(), payload.tobytes(),
                     caption.encode("utf-8")])

  def decode(self, record: bytes) -> dict[str, np.ndarray]:
    """One record -> {"tokens": (h, w) int32, "clip", "clip_image": (c_clip,) float32, and
    "byt5_ids": (n,) int32 or "byt5": (n, byt5_dim) bfloat16} (caption dropped)."""
    import ml_dtypes
    if len(record) < self._fixed:
      raise ValueError(f"record of {len(record)} bytes is shorter than the {self._fixed} bytes "
                       f"of tokens {self.latent_shape} and two embeddings ({self.c_clip},)")
    dtype = np.dtype(self.token_dtype).newbyteorder("<")
    hw, start = int(np.prod(self.latent_shape)), self._fixed - 8 * self.c_clip - 4
    n = int(np.frombuffer(record, "<u4", 1, offset=self._fixed - 4)[0])
    payload = np.frombuffer(record, "<u2", n * self._row // 2, offset=self._fixed)
    out = {"tokens": np.frombuffer(record, dtype, hw).reshape(self.latent_shape).astype(np.int32),
           "clip": np.frombuffer(record, "<f4", self.c_clip, offset=start).astype(np.float32),
           "clip_image": np.frombuffer(record, "<f4", self.c_clip,
                                       offset=start + 4 * self.c_clip).astype(np.float32)}
    if self.byt5 == "ids":
      out["byt5_ids"] = payload.astype(np.int32)
    else:
      out["byt5"] = payload.view(ml_dtypes.bfloat16).reshape(n, self.byt5_dim)
    return out

  def caption(self, record: bytes) -> str:
    n = int(np.frombuffer(record, "<u4", 1, offset=self._fixed - 4)[0])
    return record[self._fixed + n * self._row:].decode("utf-8")


def write_shard(path: str, records: list[bytes]) -> None:
  """Writes one ArrayRecord file atomically (a temporary file renamed into place)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  def write(tmp):
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for record in records:
      writer.write(record)
    writer.close()
  _write_atomically(path, write)


def write_json(path: str, obj: dict) -> None:
  """Writes JSON atomically: concurrent writers of the same content never leave a torn file."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2)
  _write_atomically(path, write)


TMP_INFIX = ".tmp."


def _write_atomically(path: str, write) -> None:
  """`write(tmp)` to a temporary name beside `path`, unique per host and process (shared file
  systems), then renamed to `path`; the temporary file is removed when `write` fails."""
  tmp = f"{path}{TMP_INFIX}{socket.gethostname()}.{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def remove_stale_temporaries(directory: str, owned: list[str]) -> list[str]:
  """Removes the temporary files that killed writers left in `directory`: every one for a file
  named in `owned` (files only this process writes), and for other files those of this host's
  processes that no longer run. Returns the removed paths."""
  owned, host, removed = set(owned), socket.gethostname(), []
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    target, infix, writer = name.rpartition(TMP_INFIX)
    if not infix:
      continue
    writer_host, _, pid = writer.rpartition(".")
    if target in owned or (writer_host == host and pid.isdigit() and not _running(int(pid))):
      os.remove(os.path.join(directory, name))
      removed.append(os.path.join(directory, name))
  return removed


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def read_manifest(directory: str) -> dict:
  """The manifest of a prepared dataset; FileNotFoundError names a missing or unfinished one."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: not a prepared dataset, or `prepare` has not "
                            "finished every shard (run it again to complete it)")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") not in (FORMAT, FORMAT_V3):
    raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r} or "
                     f"{FORMAT_V3!r}")
  return manifest


def record_format(manifest: dict) -> RecordFormat | V3RecordFormat:
  """The format of a manifest's records: v1's or, for FORMAT_V3, Paella v3's."""
  if manifest["format"] == FORMAT_V3:
    return V3RecordFormat(tuple(manifest["latent_shape"]), manifest["c_clip"],
                          manifest["token_dtype"], manifest["byt5"], manifest.get("byt5_dim", 0))
  return RecordFormat(tuple(manifest["latent_shape"]), manifest["c_clip"],
                      manifest["token_dtype"])


def record_paths(directory: str, manifest: dict) -> list[str]:
  """The non-empty shard files of a manifest, in order."""
  return [os.path.join(directory, s["file"]) for s in manifest["shards"] if s["records"]]


def merge_summaries(summaries: list[dict]) -> dict:
  """Totals over shard summaries: records, examples read, skips per reason."""
  skipped = collections.Counter()
  for s in summaries:
    skipped.update(s["skipped"])
  return {"num_records": sum(s["records"] for s in summaries),
          "examples_read": sum(s["examples"] for s in summaries),
          "skipped": dict(sorted(skipped.items()))}
