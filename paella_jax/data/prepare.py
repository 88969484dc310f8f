"""Pre-encoding: raw image-caption source -> ArrayRecord shards of VQ tokens + CLIP embeddings.

The library behind paella-prepare (its flags: paella_jax/commands/prepare.py). `Preparer` writes
Paella v1's records, `V3Preparer` Paella v3's (CLIP text and image embeddings and the caption's
ByT5 byte ids, or the ByT5 encoder's hidden states).

Each input shard becomes one output shard DIR/NAME.array_record plus its summary DIR/NAME.json.
Images are decoded, resized (shorter side to `size`) and cropped (random with a per-example
seed, or center) on host threads; the VQGAN and the CLIP text tower encode them in jit-compiled
batches data-parallel over the local devices. Every process of a multi-host job takes every
process_count-th input shard. A shard whose summary exists is skipped, so a rerun after an
interruption resumes: DIR/settings.json makes sure it uses the same settings, and each summary
records what its shard held (count, a hash of every example's key and sizes, and a few probed
examples), which the rerun checks against the source before going on; a source that changed
under a finished shard is refused (its examples would be duplicated or lost). Temporary files
an interrupted run left are removed. The process that finds every shard done writes
manifest.json. Unusable examples are skipped and counted per reason (see decode.REASONS), in
each summary, the manifest and the log.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import time

import numpy as np

from paella_jax.byt5_tokenizer import EOS_ID, ByT5Tokenizer
from paella_jax.data.decode import BadInput, decode_example, example_rng
from paella_jax.data.records import (FORMAT, FORMAT_V3, MANIFEST, RecordFormat, V3RecordFormat,
                                     merge_summaries, remove_stale_temporaries, write_json,
                                     write_shard)
from paella_jax.data.sources import Shard, Source

log = logging.getLogger("paella_jax.data")
SETTINGS = "settings.json"
PROBES = 5  # examples per shard whose key and sizes a rerun reads again to check the source


class Preparer:
  """Turns shards of a `Source` into record shards with a VQGANCodec and a ClipEncoder.

  size: output image side in pixels (a multiple of the VQGAN's factor); crop: "random" (the
  paper's Resize + RandomCrop, fixed per example by `seed`) or "center"; min_size: images whose
  shorter side is smaller are skipped (default size // 2, at most 2x upscaling); batch_size:
  examples decoded and encoded together; threads: host threads decoding images; condition:
  "text" stores CLIP text embeddings of the captions, "image" CLIP image embeddings of the crops
  (for a model conditioned on image embeddings: variations; the encoder needs its vision tower).
  """

  format_name = FORMAT

  def __init__(self, codec, encoder, size: int = 256, crop: str = "random",
               min_size: int | None = None, seed: int = 0, batch_size: int = 256,
               threads: int = 8, condition: str = "text"):
    factor = codec.module.factor
    if size % factor:
      raise ValueError(f"--size {size} is not a multiple of the VQGAN's factor {factor}")
    if crop not in ("random", "center"):
      raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
    if condition not in ("text", "image"):
      raise ValueError(f"condition must be 'text' or 'image', got {condition!r}")
    if condition == "image" and encoder.model.config.vision is None:
      raise ValueError("condition='image' needs a CLIP checkpoint with its vision tower")
    self.condition = condition
    self.codec, self.encoder = codec, encoder
    self.size, self.crop, self.seed = size, crop, seed
    self.min_size = size // 2 if min_size is None else min_size
    self.batch_size, self.threads = batch_size, threads
    self.format = RecordFormat.for_codebook((size // factor, size // factor),
                                            encoder.model.config.projection_dim,
                                            codec.module.n_embed)

  def _load(self, shard: Shard, i: int):
    """Example i of `shard` -> (entry, (size, size, 3) uint8, caption) or (entry, BadInput),
    where entry = `read_entry` of what was read."""
    entry = [f"{shard.name}#{i}", -1, -1]
    try:
      example = shard[i]
      entry = read_entry(example)
      image, caption = decode_example(example, self.size, self.crop, self.min_size,
                                      example_rng(self.seed, example.key))
      return entry, image, caption
    except BadInput as e:
      return entry, e
    except OSError as e:  # a file that vanished or cannot be read
      return entry, BadInput("missing_image", str(e))

  def encode_shard(self, shard: Shard, pool, progress=None) -> tuple[list[bytes], dict]:
    """All usable examples of `shard` as records, in order, and the shard's summary."""
    skipped, records, n = collections.Counter(), [], len(shard)
    entries = []
    chunks = [range(lo, min(lo + self.batch_size, n)) for lo in range(0, n, self.batch_size)]
    pending = pool.map(lambda i: self._load(shard, i), chunks[0]) if chunks else None
    for c in range(len(chunks)):
      loaded = list(pending)
      if c + 1 < len(chunks):  # decode the next chunk while this one is encoded
        pending = pool.map(lambda i: self._load(shard, i), chunks[c + 1])
      good = []
      for entry, *rest in loaded:
        entries.append(entry)
        if isinstance(rest[0], BadInput):
          skipped[rest[0].reason] += 1
          log.info("skipped %s: %s", entry[0], rest[0])
        else:
          good.append(rest)
      if good:
        images = np.stack([image for image, _ in good]).astype(np.float32) / 255.0
        records.extend(self.encode_batch(images, [caption for _, caption in good]))
      if progress is not None:
        progress.update(len(loaded))
    summary = {"shard": shard.name, "file": f"{shard.name}.array_record", "records": len(records),
               "examples": n, "skipped": dict(sorted(skipped.items())),
               "read": {"sha256": hashlib.sha256(json.dumps(entries).encode()).hexdigest(),
                        "probes": {str(i): entries[i] for i in probe_positions(n)}}}
    return records, summary

  def encode_batch(self, images: np.ndarray, captions: list[str]) -> list[bytes]:
    """Crops (N, size, size, 3) in [0, 1] and their captions -> N records."""
    tokens = self.codec.encode(images)
    clip = (self.encoder.encode_text(captions) if self.condition == "text" else
            self.encoder.encode_images(self._clip_pixels(images)))
    return [self.format.encode(t, e, s) for t, e, s in zip(tokens, clip, captions)]

  def _clip_pixels(self, images: np.ndarray) -> np.ndarray:
    """Crops (N, size, size, 3) in [0, 1] -> CLIP's normalised input for image embeddings."""
    from paella_jax.models.clip import preprocess_images
    return np.asarray(preprocess_images(images, self.encoder.model.config.vision.image_size))

  def run(self, source: Source, out_dir: str, process_index: int = 0, process_count: int = 1,
          progress: bool = True, info: dict | None = None) -> dict | None:
    """Encodes this process's shards of `source` into `out_dir` (skipping finished ones);
    returns the manifest if every shard is now done (and writes it), else None."""
    names = [s.name for s in source.shards]
    if len(set(names)) != len(names):
      raise ValueError(f"{source.description}: shard names are not unique")
    self._claim(out_dir, self.settings(source, info or {}))
    finished, mine = [], []
    for s in source.shards[process_index::process_count]:
      (finished if os.path.isfile(os.path.join(out_dir, f"{s.name}.json")) else mine).append(s)
    if finished:
      check_unchanged(finished, out_dir)
      log.warning("resuming: %d of this process's shards are already finished", len(finished))
    removed = remove_stale_temporaries(out_dir, [f"{s.name}{ext}" for s in mine
                                                 for ext in (".array_record", ".json")])
    if removed:
      log.warning("removed %d temporary files of an interrupted run: %s", len(removed),
                  ", ".join(os.path.basename(p) for p in removed))
    bar = None
    if progress and mine:
      from tqdm.auto import tqdm
      bar = tqdm(total=sum(len(s) for s in mine), desc=f"prepare {len(mine)} shards",
                 unit="img", dynamic_ncols=True)
    start, total = time.perf_counter(), collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      for shard in mine:
        records, summary = self.encode_shard(shard, pool, bar)
        write_shard(os.path.join(out_dir, summary["file"]), records)
        write_json(os.path.join(out_dir, f"{shard.name}.json"), summary)
        total.update(summary["skipped"])
        if summary["skipped"]:
          log.warning("%s: %d records, skipped %s", shard.name, summary["records"],
                      summary["skipped"])
        if bar is not None:
          bar.set_postfix(records=bar.n - sum(total.values()), skipped=sum(total.values()))
    if bar is not None:
      bar.close()
    if mine:
      log.warning("process %d: %d shards in %.1f s", process_index, len(mine),
                  time.perf_counter() - start)
    return self.finish(source, out_dir, info or {})

  def settings(self, source: Source, info: dict) -> dict:
    """What the records depend on: shapes, preprocessing, source, encoders (from `info`)."""
    return {"latent_shape": list(self.format.latent_shape), "c_clip": self.format.c_clip,
            "token_dtype": self.format.token_dtype, "num_labels": self.codec.module.n_embed,
            "image_size": self.size, "crop": self.crop, "min_size": self.min_size,
            "seed": self.seed, "condition": self.condition, "source": {"kind": source.kind, "description": source.description},
            **_encoders(info, ("vqgan", "clip"))}

  @staticmethod
  def _claim(out_dir: str, settings: dict) -> None:
    """Records the settings in OUT/settings.json, or checks that a resumed run uses the same
    ones (so a rerun never mixes records of two different preparations)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.isfile(path):
      write_json(path, settings)
      return
    with open(path) as f:
      previous = json.load(f)
    changed = sorted(k for k in set(previous) | set(settings)
                     if previous.get(k) != json.loads(json.dumps(settings.get(k))))
    if changed:
      raise ValueError(f"{out_dir} holds records prepared with other settings ({', '.join(changed)}"
                       f" differ; see its {SETTINGS}): choose another --out, or delete it to "
                       "start again")

  def finish(self, source: Source, out_dir: str, info: dict) -> dict | None:
    """Writes (and returns) the manifest once every shard's summary exists."""
    paths = [os.path.join(out_dir, f"{s.name}.json") for s in source.shards]
    if not all(os.path.isfile(p) for p in paths):
      return None
    summaries = []
    for p in paths:
      with open(p) as f:
        summaries.append(json.load(f))
    manifest = {"format": self.format_name, **merge_summaries(summaries),
                **self.settings(source, info), **info, "shards": summaries}
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


class V3Preparer(Preparer):
  """Paella v3's records (`V3RecordFormat`): VQ tokens, the CLIP text and image embeddings
  (the encoder needs its vision tower; images go through `preprocess_v3`) and the caption's
  ByT5 input. byt5 = "ids" (the default) stores its byte ids, truncated to `byt5_max_length`
  with </s>; the train step runs the frozen encoder on them. byt5 = "states" stores the hidden
  states of `byt5_encoder` (a `ByT5Encoder`) in bfloat16 instead. The manifest's "empty" holds
  what conditioning dropout swaps in: the CLIP text embedding of "" ("clip"), and with "states"
  the ByT5 states of "" ("byt5", (1, byt5_dim))."""

  format_name = FORMAT_V3

  def __init__(self, codec, encoder, byt5: str = "ids", byt5_encoder=None,
               byt5_max_length: int = 768, **kwargs):
    super().__init__(codec, encoder, condition="text", **kwargs)
    if encoder.model.config.vision is None:
      raise ValueError("Paella v3 records need a CLIP checkpoint with its vision tower")
    if byt5 == "states" and byt5_encoder is None:
      raise ValueError("byt5='states' needs a ByT5 encoder (--byt5-checkpoint)")
    self.tokenizer = ByT5Tokenizer(byt5_max_length)
    self.byt5_encoder = byt5_encoder if byt5 == "states" else None
    dim = byt5_encoder.model.config.d_model if self.byt5_encoder else 0
    v1 = self.format
    self.format = V3RecordFormat(v1.latent_shape, v1.c_clip, v1.token_dtype, byt5, dim)

  def byt5_inputs(self, captions: list[str]) -> list[np.ndarray]:
    """Each caption's ByT5 input: (n,) ids, or (n, byt5_dim) states at its n tokens."""
    padded = self.tokenizer(captions, warn_truncated=False)  # captions cut as in training
    ends = padded.shape[1] - np.argmax(padded[:, ::-1] == EOS_ID, axis=1)  # after the last </s>
    ids = [row[:end] for row, end in zip(padded, ends)]
    if self.byt5_encoder is None:
      return ids
    states, _ = self.byt5_encoder.encode(captions)
    return [s[:len(i)] for s, i in zip(states, ids)]

  def encode_batch(self, images: np.ndarray, captions: list[str]) -> list[bytes]:
    from paella_jax.encoders.clip import preprocess_v3
    tokens = self.codec.encode(images)
    clip = self.encoder.encode_text(captions)
    size = self.encoder.model.config.vision.image_size
    clip_image = self.encoder.encode_images(np.asarray(preprocess_v3(images, size)))
    return [self.format.encode(*row) for row in
            zip(tokens, clip, clip_image, self.byt5_inputs(captions), captions)]

  def settings(self, source: Source, info: dict) -> dict:
    return {**super().settings(source, info), "byt5": self.format.byt5,
            "byt5_max_length": self.tokenizer.max_length, "byt5_dim": self.format.byt5_dim,
            **_encoders(info, ("byt5_encoder",))}

  def finish(self, source: Source, out_dir: str, info: dict) -> dict | None:
    empty = {"clip": self.encoder.encode_text([""])[0].tolist()}
    if self.byt5_encoder is not None:
      import ml_dtypes
      states = self.byt5_inputs([""])[0]  # stored rounded to bfloat16, as the records' states
      empty["byt5"] = states.astype(ml_dtypes.bfloat16).astype(np.float32).tolist()
    return super().finish(source, out_dir, {**info, "empty": empty})


def _encoders(info: dict, names: tuple[str, ...]) -> dict:
  """The encoders the records depend on, as settings: each one's config and weights id, not
  its path (a moved or copied folder resumes; other weights do not)."""
  return {name: {k: v for k, v in info[name].items() if k != "checkpoint"}
          for name in names if name in info}


def read_entry(example) -> list:
  """[key, image bytes, caption bytes] of a read example (-1 for an absent part): what a
  shard's summary records of it."""
  def size(part) -> int:
    if part is None:
      return -1
    if isinstance(part, str):
      return len(part.encode("utf-8", "replace"))
    return part.nbytes if isinstance(part, np.ndarray) else len(part)
  return [example.key, size(example.image), size(example.caption)]


def probe_positions(n: int) -> list[int]:
  """The positions of a shard of n examples that a rerun reads again: first, last, between."""
  return sorted({round(i * (n - 1) / (PROBES - 1)) for i in range(PROBES)}) if n else []


def check_unchanged(shards: list[Shard], out_dir: str) -> None:
  """Raises ValueError when a finished shard's examples are no longer those its summary
  records: another count, or another key or size at a probed position. (Summaries written
  before this record existed are not checked.)"""
  for shard in shards:
    with open(os.path.join(out_dir, f"{shard.name}.json")) as f:
      summary = json.load(f)
    if "read" not in summary:
      continue
    change = None
    if len(shard) != summary["examples"]:
      change = f"held {summary['examples']} examples, now {len(shard)}"
    else:
      for i, was in sorted(summary["read"]["probes"].items(), key=lambda kv: int(kv[0])):
        now = read_entry(shard[int(i)])
        if now != was:
          change = (f"example {i} was {was[0]!r} ({was[1]} + {was[2]} bytes), now {now[0]!r} "
                    f"({now[1]} + {now[2]} bytes)")
          break
    if change:
      raise ValueError(f"the source changed since {out_dir} was prepared: shard {shard.name} "
                       f"{change}; going on would duplicate or lose examples, so restore the "
                       "source or prepare into another --out")


if __name__ == "__main__":
  from paella_jax.cli import run_main
  from paella_jax.commands.prepare import main
  run_main(main)
