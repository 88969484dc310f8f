"""Paella v3's text encoder: the encoder of google/byt5-xl (2.6B parameters), bytes in, 2560-d out.

Paella v3 conditions on the last hidden states of up to 768 byte tokens (</s> included).
Weights: the Hugging Face repository google/byt5-xl (an encoder-decoder; the decoder is
dropped), converted once with

    python -m paella_jax.convert t5 byt5-xl/ checkpoints/byt5_xl --param-dtype bfloat16

`model` is the architecture that conversion finds (a `paella_jax.models.t5.T5Config` dict).
`mesh` and `sharding.rules` split the parameters over the chips that encode (see
docs/text_encoders.md for its memory on v5e at batch 64 x 768 tokens).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.hf_repo = "google/byt5-xl"
  config.checkpoint = "checkpoints/byt5_xl"  # written by the command above
  config.model = dict(vocab_size=384, d_model=2560, d_kv=64, d_ff=6720, num_layers=36,
                      num_heads=32, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                      layer_norm_epsilon=1e-6)
  config.tokenizer = dict(max_length=768)
  config.dtype = "bfloat16"        # compute dtype of the matrix products (error: see the docs)
  config.param_dtype = "bfloat16"  # storage dtype of the parameters (5.2 GB)
  config.batch_size = 64
  config.pad_multiple = 64         # prompts are padded to a multiple of this many bytes
  config.masked = True             # False: no padding mask, as the original calls ByT5
  # Every chip on "fsdp": parameters and batch both split over all of them.
  config.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))
  config.sharding = ml_collections.ConfigDict(dict(rules=(
      ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv", "tensor"), ("heads", "tensor"),
      ("mlp", "tensor"), ("vocab", None))))
  return config
