"""Paella v3's image tokenizer: its own f4 VQGAN (`vqgan_f4.pt`, diffusers' `PaellaVQModel`).

256x256 images -> 64x64 codes of 8192 (4-d latents); `model` holds exactly the fields of
`paella_jax.models.vqgan.PaellaVQ` (see `vqgan_from_config`), here the release's.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      architecture="paella_f4", in_channels=3, out_channels=3, up_down_scale_factor=2, levels=2,
      bottleneck_blocks=12, embed_dim=384, latent_channels=4, n_embed=8192))
  c.image_size = 256
  return c
