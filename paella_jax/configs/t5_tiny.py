"""A tiny ByT5-style encoder with RANDOM weights, for tests and demos only: its states mean nothing.

Build it with `paella_jax.encoders.byt5.random_t5_encoder(config.model, seed=config.seed)`. It
keeps ByT5's byte vocabulary (384) and T5 v1.1's layout: gated GELU and an attention inner
width (heads x d_kv = 48) that differs from d_model (32).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.random_weights = True
  config.seed = 0
  config.model = dict(vocab_size=384, d_model=32, d_kv=12, d_ff=40, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=20,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
  config.tokenizer = dict(max_length=768)
  config.dtype = "float32"
  config.param_dtype = "float32"
  config.batch_size = 4
  config.pad_multiple = 16
  config.masked = True
  return config
