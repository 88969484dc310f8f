"""Paella v1's text encoder: the text tower of open_clip ViT-g-14, laion2b_s12b_b42k.

Paella v1 conditions on the pooled, unnormalised `encode_text` embedding (1024-d) of 77-token
prompts. Weights: the Hugging Face repository laion/CLIP-ViT-g-14-laion2B-s12B-b42K (or the
open_clip checkpoint of the same weights), converted once with

    python -m paella_jax.convert clip CLIP-ViT-g-14-laion2B-s12B-b42K/ checkpoints/clip_vit_g14 \
        --text-only

`model` is the architecture that conversion finds (a `paella_jax.models.clip.ClipConfig` dict).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.hf_repo = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"
  config.open_clip = ("ViT-g-14", "laion2b_s12b_b42k")  # (architecture, pretrained tag)
  config.checkpoint = "checkpoints/clip_vit_g14"  # written by the command above
  config.model = dict(
      text=dict(vocab_size=49408, width=1024, heads=16, layers=24, mlp_dim=4096,
                context_length=77, act="gelu", ln_eps=1e-5, pool="argmax", eos_token_id=49407),
      vision=None,  # Paella v1 uses the text tower only
      projection_dim=1024)
  config.tokenizer = dict(max_length=77, pad_token="!")  # open_clip pads with id 0
  config.dtype = "float32"  # compute dtype; "bfloat16" is faster (see docs/clip.md for its error)
  config.batch_size = 64
  return config
