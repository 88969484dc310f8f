"""paella-prepare: images and captions -> pre-encoded ArrayRecord shards (paella_jax/data/prepare.py).

    paella-prepare --source "laion/{00000..00999}.tar" --out data/laion \
        --vqgan ckpts/vqgan --clip ckpts/clip_g14 [--size 256 --crop random --batch-size 512]
    paella-prepare --family v3 --source ... --out data/laion_v3 \
        --vqgan ckpts/vqgan_f4 --clip ckpts/clip_vit_h14 [--byt5 states --byt5-checkpoint DIR]

From a clone: `python -m paella_jax.data.prepare ...`. A rerun with the same --out resumes (done
shards are checked against the source and skipped); --distributed splits the shards over the
processes of a multi-host job. Expected failures print one line `error: ...` (exit 2; --debug:
traceback).
"""

from __future__ import annotations

import argparse
import logging
import os

from paella_jax.checkpoint import checkpoint_id
from paella_jax.data.prepare import Preparer, V3Preparer
from paella_jax.data.records import MANIFEST
from paella_jax.data.sources import open_source


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="paella-prepare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", required=True,
                 help='a folder, an index (.jsonl/.csv/.parquet), .tar shards (file, directory, '
                      'glob or "{00000..00099}.tar" range), or "tfds:NAME"')
  p.add_argument("--out", required=True, help="output directory (records + manifest.json)")
  p.add_argument("--vqgan", required=True, help="paella-jax VQGAN checkpoint directory")
  p.add_argument("--clip", required=True, help="paella-jax CLIP checkpoint directory")
  p.add_argument("--size", type=int, default=256, help="image side after resize + crop")
  p.add_argument("--crop", choices=("random", "center"), default="random")
  p.add_argument("--min-size", type=int, default=None,
                 help="skip images whose shorter side is smaller (default size // 2)")
  p.add_argument("--seed", type=int, default=0, help="seed of the random crops")
  p.add_argument("--batch-size", type=int, default=256,
                 help="images encoded per jit call (over all local devices)")
  p.add_argument("--threads", type=int, default=16, help="image decoding threads")
  p.add_argument("--shard-size", type=int, default=10_000,
                 help="examples per output shard for folder and tfds sources")
  p.add_argument("--split", default="train", help="tfds split")
  p.add_argument("--data-dir", default=None, help="tfds data directory")
  p.add_argument("--image-key", default="image", help="tfds image feature")
  p.add_argument("--caption-key", default=None,
                 help="tfds caption feature (a/b for nested; default caption) or index column")
  p.add_argument("--path-column", default=None, help="index column holding image paths")
  p.add_argument("--condition", choices=("text", "image"), default="text",
                 help="store CLIP text embeddings of the captions (default) or CLIP image "
                      "embeddings of the images (to train/fine-tune for variations)")
  p.add_argument("--family", choices=("v1", "v3"), default="v1",
                 help="v3: Paella v3 records (tokens, CLIP text and image embeddings, ByT5 input;"
                      " the CLIP needs its vision tower)")
  p.add_argument("--byt5", choices=("ids", "states"), default="ids",
                 help="v3: store the captions' ByT5 byte ids (default; the train step encodes "
                      "them) or the ByT5 encoder's hidden states (bfloat16, see docs/data.md)")
  p.add_argument("--byt5-checkpoint", default=None,
                 help="v3 with --byt5 states: paella-jax T5 encoder checkpoint directory")
  p.add_argument("--byt5-max-length", type=int, default=768,
                 help="v3: ByT5 tokens kept per caption, </s> included")
  p.add_argument("--bfloat16", action="store_true", help="encode images in bfloat16")
  p.add_argument("--distributed", action="store_true",
                 help="multi-host: call jax.distributed.initialize() and split the shards")
  p.add_argument("--no-progress", action="store_true")
  return p


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  import jax
  import jax.numpy as jnp
  from paella_jax.encoders.clip import ClipEncoder, load_clip
  from paella_jax.encoders.vq import VQGANCodec, load_vqgan
  from paella_jax.models.vqgan import vqgan_config
  if args.distributed:
    jax.distributed.initialize()
  source = open_source(args.source, args.shard_size, args.split, args.data_dir, args.image_key,
                       args.caption_key, args.path_column)
  v3 = args.family == "v3"
  vq, vq_params = load_vqgan(args.vqgan)
  clip_model, clip_params, tokenizer = load_clip(
      args.clip, text_only=args.condition == "text" and not v3)
  codec = VQGANCodec(vq, vq_params, args.batch_size, jnp.bfloat16 if args.bfloat16 else None)
  encoder = ClipEncoder(clip_model, clip_params, tokenizer, args.batch_size, warn_truncated=False)
  common = dict(size=args.size, crop=args.crop, min_size=args.min_size, seed=args.seed,
                batch_size=args.batch_size, threads=args.threads)
  info = {"vqgan": {"checkpoint": os.path.abspath(args.vqgan), "config": vqgan_config(vq),
                    "id": checkpoint_id(args.vqgan)},
          "clip": {"checkpoint": os.path.abspath(args.clip),
                   "config": clip_model.config.to_dict(), "id": checkpoint_id(args.clip)},
          "config": vars(args)}
  if v3:
    byt5_encoder = None
    if args.byt5 == "states":
      if not args.byt5_checkpoint:
        raise ValueError("--byt5 states needs --byt5-checkpoint")
      from paella_jax.byt5_tokenizer import ByT5Tokenizer
      from paella_jax.encoders.byt5 import ByT5Encoder, load_t5_encoder
      t5, t5_params, _ = load_t5_encoder(args.byt5_checkpoint, dtype=jnp.bfloat16,
                                         param_dtype=jnp.bfloat16)
      byt5_encoder = ByT5Encoder(t5, t5_params, ByT5Tokenizer(args.byt5_max_length),
                                 args.batch_size, warn_truncated=False)
      info["byt5_encoder"] = {"checkpoint": os.path.abspath(args.byt5_checkpoint),
                              "config": t5.config.to_dict(),
                              "id": checkpoint_id(args.byt5_checkpoint)}
    preparer = V3Preparer(codec, encoder, args.byt5, byt5_encoder, args.byt5_max_length,
                          **common)
  else:
    preparer = Preparer(codec, encoder, condition=args.condition, **common)
  manifest = preparer.run(source, args.out, jax.process_index(), jax.process_count(),
                          not args.no_progress, info)
  if manifest is None:
    print(f"this process's shards are done; other processes' shards are still missing in "
          f"{args.out} (the last to finish writes {MANIFEST})")
  else:
    print(f"{manifest['num_records']:,} records of {manifest['examples_read']:,} examples in "
          f"{len(manifest['shards'])} shards at {args.out}; skipped {manifest['skipped'] or 0}")
