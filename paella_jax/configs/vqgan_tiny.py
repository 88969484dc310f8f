"""A tiny VQGAN for tests and the CPU demo: f=4, 32x32 images -> 8x8 codes out of 64.

Its 64 codes and 8x8 latents match configs/tiny.py's token predictor. Trains on the built-in
procedural shapes in a few minutes on 2 CPU cores (no discriminator, no perceptual loss).
"""

from paella_jax.configs import vqgan_sber_f8


def get_config():
  c = vqgan_sber_f8.get_config()
  c.model.update(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), resolution=32,
                 z_channels=32, embed_dim=32, n_embed=64, quantizer="vq", norm_groups=8)
  c.image_size = 32
  c.train.update(batch_size=16, total_steps=1_000, learning_rate=1e-3, adam_b1=0.9, adam_b2=0.99,
                 recon_loss="l1", perceptual_weight=0.0, aux_weight=1.0,
                 temperature=(1.0, 1.0 / 16, 500), disc_weight=0.0, disc_start=500,
                 disc_channels=16, disc_layers=2, log_every=50, checkpoint_every=500,
                 # dead-code restarts (not in taming, paella_jax/training/vqgan.py): off here,
                 # on in configs/demo.py
                 restart_every=0, restart_until=0)
  return c
