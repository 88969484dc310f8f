"""A tiny Paella v3 for tests and quick CPU runs (about 0.2M parameters, 16x16 latents), with a
tiny random ByT5 encoder (configs/t5_tiny.py, 40-d) run in the train step on byte ids."""

from paella_jax.configs import paella_v3, t5_tiny


def get_config():
  c = paella_v3.get_config()
  c.model.update(num_labels=64, c_in=16, c_out=16, c_r=16, c_cond=32, c_hidden=(32, 64),
                 nhead=(-1, 4), blocks=(1, 1), level_config=("CT", "CTA"), clip_embd=24,
                 byt5_embd=40)
  c.latent_shape = (16, 16)
  c.data.byt5_buckets = (8, 16, 32, 64)
  c.byt5 = t5_tiny.get_config()
  c.byt5.model.d_model = c.model.byt5_embd
  c.train.update(batch_size=16, total_steps=200, learning_rate=3e-3, warmup_steps=20,
                 byt5_drop_prob=0.2, clip_keep_prob=0.5, clip_image_keep_prob=0.5,
                 log_every=20, checkpoint_every=100)
  c.mesh.shape = (-1, 1, 1)  # data parallel over every device; tests set e.g. (2, 4, 1)
  c.sampling.update(steps=8)
  return c
