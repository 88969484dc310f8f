"""Paella v1's image tokenizer: ruDALL-E's Sber-VQGAN (`vqgan.gumbelf8-sber.model.ckpt`).

taming-transformers Encoder/Decoder with a Gumbel quantizer: f=8 (256x256 images -> 32x32 codes),
8192 codes, 256-d embeddings, attention at the 32x32 level and in the middle blocks.
`model` holds exactly the fields of `paella_jax.models.vqgan.VQGAN` (see `vqgan_from_config`);
`train` holds stage-1 hyper-parameters (taming's Gumbel VQGAN recipe) for training from scratch
(`paella-train --config vqgan_sber_f8 --config.data.path=FOLDER`, see docs/vqgan.md).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.job = "vqgan"  # paella-train trains this VQGAN (stage 1) on `data`'s images
  c.model = ml_collections.ConfigDict(dict(
      architecture="taming", ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2,
      attn_resolutions=(32,), resolution=256, z_channels=256, embed_dim=256, n_embed=8192,
      quantizer="gumbel"))
  c.image_size = 256

  c.train = ml_collections.ConfigDict(dict(
      seed=0, batch_size=64, total_steps=500_000, learning_rate=4.5e-6 * 64, warmup_steps=0,
      adam_b1=0.5, adam_b2=0.9, grad_clip=0.0,
      lr_decay_steps=0,  # > 0: cosine decay to 0 over the last lr_decay_steps (taming: none)
      recon_loss="l1", recon_weight=1.0, perceptual_weight=1.0, perceptual_weights_path="",
      aux_weight=1e-8,  # the Gumbel KL weight (taming's kl_weight) or the codebook loss weight
      temperature=(1.0, 1.0 / 16, 100_000),  # Gumbel temperature: start, end, annealing steps
      disc_weight=0.8, disc_start=100_001, disc_channels=64, disc_layers=3,
      log_every=100, checkpoint_every=5_000, keep_checkpoints=3))

  # The images stage 1 trains on, read whole into memory at image_size x image_size.
  # source "images": `path` is anything paella-prepare reads (a folder of images, an index
  # .jsonl/.csv/.parquet, webdataset .tar shards, "tfds:NAME"; split, image_key, caption_key and
  # path_column as its flags); each image's shorter side resized to image_size, then a "center"
  # or "random" crop (fixed per image by `seed`). source "scenes": `num_images` of the demo's
  # generated scenes (paella_jax/data/scenes.py, drawn with `seed`).
  c.data = ml_collections.ConfigDict(dict(
      source="images", path="", crop="center", seed=0, num_images=4096, split="train",
      image_key="image", caption_key="", path_column=""))
  return c
