"""A tiny token predictor for tests and quick CPU runs (about 0.2M parameters, 8x8 latents)."""

from paella_jax.configs import clip_tiny, paella_v1, vqgan_tiny


def get_config():
  c = paella_v1.get_config()
  c.model.update(num_labels=64, c_hidden=64, c_clip=32, c_r=16,
                 down_levels=(1, 2), up_levels=(2, 1))
  c.latent_shape = (8, 8)
  c.vqgan = vqgan_tiny.get_config()  # 32x32 images -> 8x8 codes out of 64
  c.clip = clip_tiny.get_config()    # 32-d embeddings (random weights)
  c.train.update(batch_size=16, total_steps=200, learning_rate=3e-3, warmup_steps=20,
                 cond_drop_mode="sample", log_every=20, checkpoint_every=100)
  c.mesh.shape = (-1, 1, 1)  # data parallel over every device; tests set e.g. (2, 4, 1)
  c.sampling.update(steps=8)
  return c
