"""The whole system on your own captioned images, with the demo's recipe (configs/demo.py):

    paella-train --config folder --config.data.path=FOLDER [--workdir runs/folder]

FOLDER is anything paella-prepare reads: a folder of images with NAME.txt / NAME.json captions,
an index (.jsonl, .csv, .parquet), webdataset .tar shards or "tfds:NAME" (see configs/
vqgan_sber_f8.py's `data` section for the options). Stage 1 (the tiny VQGAN, 32x32 images ->
8x8 codes of 64), the random tiny CLIP, the prepared records, stage 2 (the tiny token predictor)
and samples of `eval.captions` of the folder's own captions, each `eval.samples_per_caption`
times, land in WORKDIR; a stage whose output exists is skipped. docs/training.md#your-own-images.
"""

import ml_collections

from paella_jax.configs import demo


def get_config():
  c = demo.get_config()
  c.workdir = "runs/folder"
  c.data.update(source="images", path="")  # --config.data.path=FOLDER
  c.eval = ml_collections.ConfigDict(dict(captions=8, samples_per_caption=4))
  return c
