"""A tiny CLIP with RANDOM weights, for tests and the demo only: its embeddings mean nothing.

Build it with `paella_jax.convert.clip.random_clip(config.model, seed=config.seed)`: the weights
depend only on the seed. It keeps CLIP's real vocabulary and context length, so that the real
tokenizer feeds it, and has a vision tower on 32x32 images.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.random_weights = True
  config.seed = 0
  config.model = dict(
      text=dict(vocab_size=49408, width=32, heads=4, layers=2, mlp_dim=64, context_length=77,
                act="gelu", ln_eps=1e-5, pool="argmax", eos_token_id=49407),
      vision=dict(image_size=32, patch_size=8, width=32, heads=4, layers=2, mlp_dim=64,
                  act="gelu", ln_eps=1e-5),
      projection_dim=32)
  config.tokenizer = dict(max_length=77, pad_token="!")
  config.dtype = "float32"
  config.batch_size = 8
  return config
