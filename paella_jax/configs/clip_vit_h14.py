"""Paella v3's CLIP: open_clip ViT-H-14, laion2b_s32b_b79k, text and vision towers.

Paella v3 conditions on the pooled, unnormalised `encode_text` embedding (1024-d) of 77-token
prompts and, optionally, on the `encode_image` embedding of the image preprocessed with
`paella_jax.encoders.clip.preprocess_v3` (bicubic Resize(224) + CLIP mean/std). Weights: the
open_clip checkpoint (open_clip_pytorch_model.bin of the Hugging Face repository
laion/CLIP-ViT-H-14-laion2B-s32B-b79K), converted once with

    python -m paella_jax.convert clip open_clip_pytorch_model.bin checkpoints/clip_vit_h14 \
        --arch ViT-H-14

(the Hugging Face CLIPModel files of the same repository convert too: pass the directory and
no --arch). `model` is the architecture that conversion finds (a ClipConfig dict).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.hf_repo = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
  config.open_clip = ("ViT-H-14", "laion2b_s32b_b79k")  # (architecture, pretrained tag)
  config.checkpoint = "checkpoints/clip_vit_h14"  # written by the command above
  config.model = dict(
      text=dict(vocab_size=49408, width=1024, heads=16, layers=24, mlp_dim=4096,
                context_length=77, act="gelu", ln_eps=1e-5, pool="argmax", eos_token_id=49407),
      vision=dict(image_size=224, patch_size=14, width=1280, heads=16, layers=32, mlp_dim=5120,
                  act="gelu", ln_eps=1e-5),
      projection_dim=1024)
  config.tokenizer = dict(max_length=77, pad_token="!")  # open_clip pads with id 0
  config.image_size = 224   # preprocess_v3(images, size=224)
  config.antialias = True   # torchvision >= 0.17's Resize on tensors (see preprocess_v3)
  config.dtype = "float32"  # compute dtype; "bfloat16" is faster
  config.batch_size = 64
  return config
