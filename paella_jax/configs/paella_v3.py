"""Paella v3 as released (`Paella(byt5_embd=2560)`, paella_v3.pt): 1,008,350,592 parameters.

Conditioning: ByT5-XL encoder hidden states (2560-d, up to 768 byte tokens), open_clip ViT-H-14
text and image embeddings (1024-d); tokens: the Paella f4 VQ (vqgan_f4.pt), 64x64 codes of 8192
for 256 x 256 images. Training hyper-parameters are the original's: AdamW 1e-4 (wd 0.01),
10k-step linear warm-up then constant, gradient clipping 1.0, label smoothing 0.1, per-token loss
weights with per-image normalisation, conditioning dropout drawn once per batch, global batch
2048. At 1.0B parameters, fp32 params + Adam moments + EMA take ~16 GB: train with FSDP (the mesh
below), not data parallel, on 16 GB chips.
"""

import copy

import ml_collections

from paella_jax.configs import byt5_xl
from paella_jax.families import PAELLA_V3


def get_config():
  c = ml_collections.ConfigDict()
  c.job = "paella"  # paella-train trains this token predictor (stage 2)
  c.kind = "paella_v3"
  c.model = ml_collections.ConfigDict(dict(
      num_labels=8192, c_in=256, c_out=256, c_r=64, patch_size=2, c_cond=1024,
      c_hidden=(640, 1280, 1280), nhead=(-1, 16, 16), blocks=(6, 16, 6),
      level_config=("CT", "CTA", "CTA"), clip_embd=1024, byt5_embd=2560, clip_seq_len=4,
      kernel_size=3, self_attn=True,
      # "block" recomputes each block's activations in the backward pass ("dots": all but its
      # matmul outputs). The release's batch of 2048 on v5e:16x16 (8 rows per chip) needs
      # "block": 11.84 GiB peak per chip, against ~59 GiB of activations with "none"
      # (docs/scale.md). Sampling and conversion are unaffected.
      remat="block", dtype="float32", param_dtype="float32"))
  c.latent_shape = (64, 64)  # 256 x 256 images through the f4 VQ

  c.train = ml_collections.ConfigDict(dict(
      seed=0, batch_size=2048, total_steps=1_500_000,
      learning_rate=1e-4, warmup_steps=10_000, schedule="warmup_constant",
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01, grad_clip=1.0,
      label_smoothing=0.1,
      # Per-token loss weight 1 - (1 - replaced) (1 - r) (1 - loss_weight_min).
      loss_weight_min=0.3,
      # Drawn once per batch, as the original: the caption's ByT5 replaced by the empty
      # caption's with byt5_drop_prob; CLIP text kept with clip_keep_prob (else the empty
      # caption's embedding); the CLIP image embedding kept with clip_image_keep_prob (else absent).
      byt5_drop_prob=0.05, clip_keep_prob=0.1, clip_image_keep_prob=0.1,
      log_every=100, checkpoint_every=5_000, keep_checkpoints=3,
      ema_decay=0.0, grad_accum_steps=1, peak_flops_per_device=0.0, init_from=""))

  # (data, fsdp, tensor) within a slice: FSDP over every device of a slice (params, Adam moments
  # and EMA split along "embed"; batch split over data x fsdp); dcn_shape for multi-slice.
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), dcn_shape=(1, 1, 1)))
  # Logical axes of the parameters (models/paella_v3.py) and activations -> mesh axes: batch
  # over data x fsdp, channels whole, MLP hidden units, heads and logits over tensor.
  c.sharding = ml_collections.ConfigDict(dict(rules=(
      ("batch", ("data", "fsdp")), ("act_embed", None), ("act_mlp", "tensor"),
      ("act_vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
      ("vocab", "tensor"), ("cond", None), ("conv_in", None))))

  # byt5/clip/vqgan_checkpoint: the encoders sample.py should use with the exported model (paths
  # relative to the exported model directory, or absolute; "" records none).
  c.export = ml_collections.ConfigDict(dict(weights="params", dtype="float32", byt5_checkpoint="",
                                            clip_checkpoint="", vqgan_checkpoint=""))
  # source: records (paella-prepare --family v3, see docs/data.md) | random | arrays (.npz, see
  # docs/v3.md). byt5: what the data holds for the caption: "ids" (ByT5 byte ids; the step runs
  # the frozen encoder of c.byt5 on them, as the original) or "states" (precomputed hidden
  # states). Each batch's ByT5 inputs are padded (masked) to the smallest of byt5_buckets that
  # holds its longest caption: the step compiles once per bucket.
  c.data = ml_collections.ConfigDict(dict(source="random", path="", byt5="ids",
                                          byt5_buckets=(64, 128, 256, 512, 768),
                                          workers=0, prefetch=2))
  # The frozen text encoder run inside the train step on byte ids: ByT5-XL's encoder in
  # bfloat16, its parameters sharded by its own rules (FSDP over "fsdp") on the training mesh.
  c.byt5 = byt5_xl.get_config()

  # The original sampler's defaults (paella_jax/sampler_settings.py).
  c.sampling = ml_collections.ConfigDict(copy.deepcopy(dict(PAELLA_V3.sampler_defaults)))
  return c
