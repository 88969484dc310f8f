"""Tiny raw datasets with every kind of bad input, and tiny random encoders, for the data tests."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

SIZE = 32  # configs/vqgan_tiny.py: 32x32 images -> 8x8 codes


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt)
  return buf.getvalue()


def _rgb(w: int, h: int, seed: int) -> Image.Image:
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def raw_examples() -> tuple[list[tuple[str, dict[str, bytes]]], dict[str, str], dict[str, int]]:
  """(key, {ext: bytes}) members; the captions of the valid keys; expected skips per reason."""
  grey16 = Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16))
  palette = _rgb(36, 36, 9).convert("P")
  palette.info["transparency"] = 0
  jpeg = _png(_rgb(64, 48, 3), "JPEG")
  valid = {
      "rgb_jpg": (_png(_rgb(48, 40, 1), "JPEG"), "jpg"),
      "rgb_wide": (_png(_rgb(96, 32, 2)), "png"),
      "cmyk": (_png(_rgb(40, 40, 4).convert("CMYK"), "JPEG"), "jpg"),
      "grey": (_png(_rgb(40, 40, 5).convert("L")), "png"),
      "alpha": (_png(_rgb(40, 40, 6).convert("RGBA")), "png"),
      "grey_alpha": (_png(_rgb(40, 40, 7).convert("LA")), "png"),
      "sixteen_bit": (_png(grey16), "png"),
      "palette": (_png(palette), "png"),
      "webp": (_png(_rgb(40, 40, 8), "WEBP"), "webp"),
  }
  members, captions = [], {}
  for i, (key, (data, ext)) in enumerate(valid.items()):
    captions[key] = f"a picture number {i} ({key})"
    members.append((key, {ext: data, "txt": captions[key].encode()}))
  captions["json_caption"] = "captioned through json"
  members.append(("json_caption", {"png": _png(_rgb(40, 40, 10)),
                                   "json": json.dumps({"caption": "captioned through json",
                                                       "url": "x"}).encode()}))
  members += [
      ("corrupt", {"jpg": b"this is not an image at all", "txt": b"corrupt"}),
      ("truncated", {"jpg": jpeg[:len(jpeg) // 2], "txt": b"truncated"}),
      ("tiny", {"png": _png(_rgb(8, 8, 11)), "txt": b"tiny"}),
      ("empty_caption", {"png": _png(_rgb(40, 40, 12)), "txt": b"  \n"}),
      ("latin1_caption", {"png": _png(_rgb(40, 40, 13)), "txt": "caf\xe9 cr\xe8me".encode("latin-1")}),
      ("no_caption", {"png": _png(_rgb(40, 40, 14))}),
      ("no_image", {"txt": b"an orphan caption"}),
  ]
  skips = {"corrupt_image": 2, "image_too_small": 1, "empty_caption": 1, "caption_not_utf8": 1,
           "missing_caption": 1, "missing_image": 1}
  return members, captions, skips


def write_folder(root: str) -> None:
  members, _, _ = raw_examples()
  os.makedirs(root, exist_ok=True)
  for key, files in members:
    for ext, data in files.items():
      with open(os.path.join(root, f"{key}.{ext}"), "wb") as f:
        f.write(data)


def write_tar(path: str, members=None) -> None:
  members = members if members is not None else raw_examples()[0]
  with tarfile.open(path, "w") as tar:
    for key, files in members:
      for ext, data in files.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _random_like(shapes, seed: int):
  """Random normal arrays (scale 0.05) shaped like a pytree of ShapeDtypeStructs: a model
  with random weights without compiling its init."""
  import jax
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def tiny_encoders(batch_size: int = 8):
  """(VQGANCodec, ClipEncoder) with random weights: configs/vqgan_tiny.py and clip_tiny.py."""
  import jax
  import jax.numpy as jnp
  from configs import clip_tiny, vqgan_tiny
  from paella_jax.encoders.clip import ClipEncoder
  from paella_jax.encoders.vq import VQGANCodec
  from paella_jax.models.clip import CLIP, ClipConfig, init_params
  from paella_jax.models.vqgan import vqgan_from_config
  from paella_jax.tokenizer import ClipTokenizer
  vq = vqgan_from_config(vqgan_tiny.get_config().model)
  vq_params = _random_like(jax.eval_shape(
      lambda: vq.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), method="encode")
  )["params"], 0)
  config = ClipConfig.from_dict(clip_tiny.get_config().model.to_dict())
  clip_params = _random_like(jax.eval_shape(lambda: init_params(config, jax.random.key(0))), 1)
  return (VQGANCodec(vq, vq_params, batch_size),
          ClipEncoder(CLIP(config), clip_params, ClipTokenizer(max_length=77), batch_size))


def write_synthetic_records(out_dir: str, sizes=(20, 13, 0, 31), latent=(4, 4), c_clip=8,
                            num_labels=64) -> tuple[np.ndarray, np.ndarray]:
  """A prepared dataset without encoders: record i has tokens (i + arange) % num_labels and
  clip[0] = i. Returns all (tokens, clip) in record order."""
  from paella_jax.data.records import (FORMAT, MANIFEST, RecordFormat, merge_summaries,
                                       write_json, write_shard)
  fmt = RecordFormat.for_codebook(latent, c_clip, num_labels)
  os.makedirs(out_dir, exist_ok=True)
  n = sum(sizes)
  tokens = (np.arange(n)[:, None, None] + np.arange(latent[0] * latent[1]).reshape(latent)
            ) % num_labels
  clip = np.zeros((n, c_clip), np.float32)
  clip[:, 0] = np.arange(n)
  summaries, start = [], 0
  for s, size in enumerate(sizes):
    name = f"part-{s}"
    write_shard(os.path.join(out_dir, f"{name}.array_record"),
                [fmt.encode(tokens[i], clip[i], f"caption {i}") for i in range(start, start + size)])
    summaries.append({"shard": name, "file": f"{name}.array_record", "records": size,
                      "examples": size, "skipped": {}})
    start += size
  write_json(os.path.join(out_dir, MANIFEST), {
      "format": FORMAT, **merge_summaries(summaries), "latent_shape": list(latent),
      "c_clip": c_clip, "token_dtype": fmt.token_dtype, "num_labels": num_labels,
      "shards": summaries})
  return tokens.astype(np.int32), clip
