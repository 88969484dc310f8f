"""Training batches through grain: from prepared ArrayRecord shards, or encoded on the fly.

    batches = RecordBatcher("data/laion", batch_size=1408, seed=0, rows=rows, workers=8)
    batch = next(batches)     # {"tokens": (b, h, w) int32, "clip": (b, c_clip) float32}
    state = batches.state()   # JSON-able; RecordBatcher(..., state=state) continues exactly

Both batchers shuffle globally (a seeded permutation of every record, new each epoch), give
each process its own disjoint share (`rows`, this process's rows of the global batch: its
shard index and count follow from them) and yield this process's b = len(rows) examples per
step. `workers` > 0 reads and parses in that many processes (the program needs a
`if __name__ == "__main__":` guard); the order depends on the worker count, so a resumed
run must use the same count. In
`ImageBatcher` (small datasets, fine-tuning) the workers decode and crop raw images and the
main process encodes each batch with the VQGAN and CLIP (jit, data-parallel on the local
devices) before handing it on; unusable examples are skipped (see decode.REASONS).
`V3RecordBatcher` reads Paella v3's records and pads each batch's ByT5 inputs to the smallest of
a few bucket lengths, so that the jit-compiled step sees only those shapes.
"""

from __future__ import annotations

import logging
from typing import Iterator

import grain.python as pg
import numpy as np

from paella_jax.data.decode import BadInput, decode_example
from paella_jax.data.records import (FORMAT, FORMAT_V3, read_manifest, record_format,
                                     record_paths)
from paella_jax.data.sources import Source

log = logging.getLogger("paella_jax.data")


class _ParseRecord(pg.MapTransform):

  def __init__(self, fmt):
    self.fmt = fmt

  def map(self, record: bytes) -> dict[str, np.ndarray]:
    return self.fmt.decode(record)


def _shard_options(batch_size: int, rows: slice | None) -> tuple[pg.ShardOptions, int]:
  """This process's grain shard and local batch size from its rows of the global batch."""
  rows = rows or slice(0, batch_size)
  local = rows.stop - rows.start
  if local <= 0 or batch_size % local or rows.start % local:
    raise ValueError(f"rows {rows} do not split a global batch of {batch_size} evenly")
  return pg.ShardOptions(rows.start // local, batch_size // local, drop_remainder=True), local


def _absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; programs that parse their arguments with
  argparse never parse them, so mark the defaults as parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class _GrainBatcher:
  """An endless grain DataLoader iterator with JSON-able `state()`."""

  def __init__(self, source, operations, batch_size: int, seed: int, state: dict | None,
               rows: slice | None, workers: int, prefetch: int, read_threads: int,
               batch_fn=None):
    shard, self.local_batch = _shard_options(batch_size, rows)
    if len(source) < batch_size:
      raise ValueError(f"{len(source)} examples are fewer than one global batch of {batch_size}")
    if workers:
      _absl_flags_parsed()
    sampler = pg.IndexSampler(len(source), shard, shuffle=True, num_epochs=None, seed=seed)
    loader = pg.DataLoader(
        data_source=source, sampler=sampler,
        operations=[*operations, pg.Batch(self.local_batch, drop_remainder=True,
                                          batch_fn=batch_fn)],
        worker_count=workers, worker_buffer_size=prefetch,
        read_options=pg.ReadOptions(num_threads=read_threads, prefetch_buffer_size=500))
    self._iterator = iter(loader)
    if state is not None:
      if "grain" not in state:
        raise ValueError(f"data state {state} was not written by a grain loader (the run was "
                         "started with another data.source)")
      self._iterator.set_state(state["grain"].encode())

  def state(self) -> dict:
    return {"grain": self._iterator.get_state().decode()}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)


class RecordBatcher(_GrainBatcher):
  """Batches of {"tokens" (b, h, w) int32, "clip" (b, c_clip) float32} from a directory written
  by `paella_jax.data.prepare`. `manifest` holds its description (shapes, counts, encoders)."""

  def __init__(self, directory: str, batch_size: int, seed: int = 0, state: dict | None = None,
               rows: slice | None = None, workers: int = 0, prefetch: int = 2,
               read_threads: int = 16):
    self.manifest = read_manifest(directory)
    if self.manifest["format"] != FORMAT:
      raise ValueError(f"{directory} holds {self.manifest['format']} records (Paella v3): train "
                       "them with a v3 config (kind paella_v3)")
    source = pg.ArrayRecordDataSource(record_paths(directory, self.manifest))
    super().__init__(source, [_ParseRecord(record_format(self.manifest))], batch_size, seed,
                     state, rows, workers, prefetch, read_threads)

  def check(self, latent_shape, num_labels: int, c_clip: int) -> None:
    """Raises ValueError when the records do not fit a model (latent shape, codebook, clip)."""
    _check_manifest(self.manifest, latent_shape, num_labels, c_clip)


def _check_manifest(m: dict, latent_shape, num_labels: int, c_clip: int) -> None:
  where = "prepared dataset"
  if tuple(m["latent_shape"]) != tuple(latent_shape):
    raise ValueError(f"{where}: latents {tuple(m['latent_shape'])}, the model expects "
                     f"{tuple(latent_shape)}")
  if m["num_labels"] > num_labels:
    raise ValueError(f"{where}: VQGAN with {m['num_labels']} codes, the model has {num_labels}")
  if m["c_clip"] != c_clip:
    raise ValueError(f"{where}: CLIP embeddings of {m['c_clip']}, the model expects {c_clip}")


BYT5_BUCKETS = (64, 128, 256, 512, 768)
BYT5_FIELDS = ("byt5_ids", "byt5", "byt5_mask")  # the fields whose axis 1 is ByT5 positions


def bucket_length(n: int, buckets) -> int:
  """The smallest bucket length >= n (ByT5 tokens)."""
  for b in sorted(buckets):
    if b >= n:
      return int(b)
  raise ValueError(f"{n} ByT5 tokens exceed the longest bucket {max(buckets)}: add a bucket or "
                   "prepare with a smaller --byt5-max-length")


def byt5_extent(batch: dict[str, np.ndarray]) -> int:
  """Positions up to the last real ByT5 token of any row (from "byt5_mask")."""
  used = np.flatnonzero(np.asarray(batch["byt5_mask"]).any(axis=0))
  return int(used[-1]) + 1 if len(used) else 0


def fit_byt5(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """The batch with its ByT5 fields padded (zeros, mask False) or cut to `length` positions;
  cutting drops padding only."""
  if byt5_extent(batch) > length:
    raise ValueError(f"ByT5 inputs of {byt5_extent(batch)} tokens do not fit in {length}")
  def fit(x):
    x = x[:, :length]
    return np.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
  return {k: fit(v) if k in BYT5_FIELDS else v for k, v in batch.items()}


class _BucketBatch:
  """grain batch_fn for v3 records: stacks the fixed fields; pads the ByT5 inputs of the batch
  to the smallest bucket that holds its longest, with "byt5_mask" True at real tokens; adds the
  empty caption's "clip_empty" (and with states "byt5_empty") to every row."""

  def __init__(self, buckets, empty: dict):
    self.buckets = tuple(buckets)
    self.empty = {k: np.asarray(v, np.float32) for k, v in empty.items()}

  def __call__(self, rows) -> dict[str, np.ndarray]:
    key = "byt5_ids" if "byt5_ids" in rows[0] else "byt5"
    lengths = np.array([len(r[key]) for r in rows])
    length = bucket_length(int(lengths.max()), self.buckets)
    out = {k: np.stack([r[k] for r in rows]) for k in ("tokens", "clip", "clip_image")}
    padded = np.zeros((len(rows), length, *rows[0][key].shape[1:]),
                      np.int32 if key == "byt5_ids" else np.float32)
    for i, r in enumerate(rows):
      padded[i, :len(r[key])] = r[key]
    out[key], out["byt5_mask"] = padded, np.arange(length)[None] < lengths[:, None]
    out["clip_empty"] = np.broadcast_to(self.empty["clip"], out["clip"].shape).copy()
    if key == "byt5":
      out["byt5_empty"] = np.broadcast_to(self.empty["byt5"], (len(rows), *self.empty["byt5"].shape)
                                          ).copy()
    return out


class V3RecordBatcher(_GrainBatcher):
  """Batches of Paella v3 records (`paella-prepare --family v3`): {"tokens" (b, h, w) int32,
  "clip", "clip_image", "clip_empty" (b, c_clip) float32, "byt5_ids" (b, L) int32 or "byt5"
  (b, L, byt5_dim) float32 with "byt5_empty" (b, 1, byt5_dim), "byt5_mask" (b, L) bool}.
  L is the smallest of `buckets` that holds the batch's longest caption, so a jit-compiled
  step sees at most len(buckets) shapes; padding is masked."""

  def __init__(self, directory: str, batch_size: int, buckets=BYT5_BUCKETS, seed: int = 0,
               state: dict | None = None, rows: slice | None = None, workers: int = 0,
               prefetch: int = 2, read_threads: int = 16):
    self.manifest = m = read_manifest(directory)
    if m["format"] != FORMAT_V3:
      raise ValueError(f"{directory} holds {m['format']} records, not Paella v3's: prepare it "
                       "with --family v3")
    bucket_length(m["byt5_max_length"], buckets)  # every record fits the longest bucket
    source = pg.ArrayRecordDataSource(record_paths(directory, m))
    super().__init__(source, [_ParseRecord(record_format(m))], batch_size, seed, state, rows,
                     workers, prefetch, read_threads, _BucketBatch(buckets, m["empty"]))

  def check(self, latent_shape, num_labels: int, clip_embd: int, byt5: str,
            byt5_embd: int) -> None:
    """Raises ValueError when the records do not fit a v3 model or the config's ByT5 input
    ("ids" or "states", config.data.byt5)."""
    m, where = self.manifest, "prepared dataset"
    if m["byt5"] != byt5:
      raise ValueError(f"{where}: ByT5 {m['byt5']}, the config reads {byt5} (config.data.byt5)")
    if byt5 == "states" and m["byt5_dim"] != byt5_embd:
      raise ValueError(f"{where}: ByT5 states of {m['byt5_dim']}, the model expects {byt5_embd}")
    _check_manifest(m, latent_shape, num_labels, clip_embd)


class _RawExamples(pg.RandomAccessDataSource):
  """Every example of a Source, concatenated over its shards."""

  def __init__(self, source: Source):
    self.shards, self.description = source.shards, f"{source.kind}:{source.description}"
    self.ends = np.cumsum([len(s) for s in self.shards])

  def __repr__(self) -> str:  # grain checks it on resume: the same source, the same examples
    return f"RawExamples({self.description!r}, {len(self)})"

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getitem__(self, i: int):
    s = int(np.searchsorted(self.ends, i, side="right"))
    return self.shards[s][int(i - (self.ends[s - 1] if s else 0))]


class _DecodeCrop(pg.RandomMapTransform):
  """RawExample -> {"image": (size, size, 3) uint8, "caption": str}, or None when unusable."""

  def __init__(self, size: int, crop: str, min_size: int):
    self.size, self.crop, self.min_size = size, crop, min_size

  def random_map(self, example, rng: np.random.Generator):
    try:
      image, caption = decode_example(example, self.size, self.crop, self.min_size, rng)
    except BadInput as e:
      log.info("skipped %s: %s", example.key, e)
      return None
    return {"image": image, "caption": caption}


class _Usable(pg.FilterTransform):

  def filter(self, element) -> bool:
    return element is not None


class ImageBatcher(_GrainBatcher):
  """On-the-fly encoding: batches of {"tokens", "clip"} from a raw `Source` (see sources.py),
  encoded by `codec` (VQGANCodec) and `encoder` (ClipEncoder) as they are drawn. Crops are
  random per epoch ("random", fixed by seed and record) or centred."""

  def __init__(self, source: Source, codec, encoder, batch_size: int, size: int = 256,
               crop: str = "random", min_size: int | None = None, seed: int = 0,
               state: dict | None = None, rows: slice | None = None, workers: int = 0,
               prefetch: int = 2, read_threads: int = 16):
    self.codec, self.encoder = codec, encoder
    ops = [_DecodeCrop(size, crop, size // 2 if min_size is None else min_size), _Usable()]
    super().__init__(_RawExamples(source), ops, batch_size, seed, state, rows, workers,
                     prefetch, read_threads)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = super().__next__()
    return {"tokens": self.codec.encode(batch["image"].astype(np.float32) / 255.0),
            "clip": self.encoder.encode_text([str(c) for c in batch["caption"]])}


def batcher_from_config(config, state: dict | None = None, rows: slice | None = None):
  """The "records", "images" or "scenes" data source of a training config (see docs/data.md):
  config.data.path, and config.data.workers / prefetch; the last two encode on the fly with
  config.data.vqgan and config.data.clip (checkpoint directories) at image_size, crop ("scenes":
  the demo's generated scenes, `paella_jax.data.read.open_data`)."""
  d, m, t = config.data, config.model, config.train
  workers, prefetch = d.get("workers", 0), d.get("prefetch", 2)
  if d.source == "records":
    batcher = RecordBatcher(d.path, t.batch_size, t.seed, state, rows, workers, prefetch)
    batcher.check(config.latent_shape, m.num_labels, m.c_clip)
    return batcher
  if d.source in ("images", "scenes"):
    from paella_jax.data.read import open_data
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    from paella_jax.encoders.vq import VQGANCodec, load_vqgan
    rows_ = rows or slice(0, t.batch_size)
    vq, vq_params = load_vqgan(d.vqgan)
    clip_model, clip_params, tokenizer = load_clip(d.clip, text_only=True)
    local = rows_.stop - rows_.start
    return ImageBatcher(open_data(d), VQGANCodec(vq, vq_params, local),
                        ClipEncoder(clip_model, clip_params, tokenizer, local,
                                    warn_truncated=False), t.batch_size,
                        d.get("image_size", 256), d.get("crop", "random"), None, t.seed, state,
                        rows, workers, prefetch)
  raise ValueError(f"unknown data.source {d.source!r} for the grain loader (records, images, "
                   "scenes)")
