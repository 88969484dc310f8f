"""Paella v1 as released: the 573M-parameter token predictor of the paper (model_600000.pt).

Training hyper-parameters are the paper's: AdamW 3e-4 (wd 0.01, eps 1e-8), linear warm-up over
10% then constant, gradient clipping 5, label smoothing 0.1, batch 1408, ~600k steps, fp32.
"""

import copy

import ml_collections

from paella_jax.configs import clip_vit_g14, vqgan_sber_f8
from paella_jax.families import PAELLA_V1


def get_config():
  c = ml_collections.ConfigDict()
  c.job = "paella"  # paella-train trains this token predictor (stage 2)
  c.model = ml_collections.ConfigDict(dict(
      num_labels=8192, c_hidden=1280, c_clip=1024, c_r=64,
      down_levels=(4, 8, 16), up_levels=(16, 8, 4), dtype="float32", param_dtype="float32",
      # Recompute activations in the backward pass to save memory: "none", "block" (each
      # ResBlock keeps only its inputs) or "dots" (its inputs and matmul outputs).
      remat="none"))
  c.latent_shape = (32, 32)  # 256 x 256 images through the f8 VQGAN
  # The image tokenizer and text encoder this model pairs with (for data preparation, sampling).
  c.vqgan = vqgan_sber_f8.get_config()
  c.clip = clip_vit_g14.get_config()

  c.train = ml_collections.ConfigDict(dict(
      seed=0, batch_size=1408, total_steps=600_000,
      learning_rate=3e-4, warmup_steps=60_000, schedule="warmup_constant",
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01, grad_clip=5.0,
      label_smoothing=0.1,
      # The original drops the conditioning of the whole batch on 10% of the steps ("batch");
      # "sample" drops it per sample with the same probability.
      cond_drop_prob=0.1, cond_drop_mode="batch",
      log_every=100, checkpoint_every=5_000, keep_checkpoints=3,
      # Not in the original (fp32, no EMA, no accumulation): 0 / 1 keep it that way.
      ema_decay=0.0, grad_accum_steps=1,
      # Peak FLOP/s of one device for MFU; 0 looks the device kind up (paella_jax.hardware).
      peak_flops_per_device=0.0,
      # Fine-tuning: start from this inference checkpoint's params (e.g. a text-conditioned
      # model fine-tuned on CLIP image embeddings for variations); "" trains from scratch.
      init_from=""))

  # Devices as (data, fsdp, tensor) within a slice; one -1 takes the remaining devices.
  # dcn_shape splits the same axes across slices (multi-slice); the mesh is their product.
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(1, 1, 1)))
  # Logical axes of the parameters and activations (see models/paella.py) -> mesh axes.
  # Activations: "batch" over data x fsdp; channels ("act_embed") whole; the MLP's hidden units
  # ("act_mlp") and the logits ("act_vocab") over tensor. Parameters: with fsdp > 1 the "embed"
  # axis of every weight and its Adam moments is split over fsdp (gathered layer by layer), the
  # "mlp" and "vocab" axes over tensor (tensor-parallel channel MLPs: column then row split).
  c.sharding = ml_collections.ConfigDict(dict(rules=(
      ("batch", ("data", "fsdp")), ("act_embed", None), ("act_mlp", "tensor"),
      ("act_vocab", "tensor"),
      ("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"), ("cond", None),
      ("conv_in", None))))

  # The inference checkpoint written to WORKDIR/model at the end: "ema" or "params" weights,
  # stored as "float32" or "bfloat16".
  # clip_checkpoint / vqgan_checkpoint: the encoders sample.py should use with it (paths
  # relative to the exported model directory, or absolute; "" records none).
  c.export = ml_collections.ConfigDict(dict(weights="params", dtype="float32",
                                            clip_checkpoint="", vqgan_checkpoint=""))

  # random | arrays (.npz or tokens.npy + clip.npy) | records (prepared ArrayRecord shards) |
  # images (raw images encoded on the fly with `vqgan` and `clip`: small datasets, fine-tuning)
  c.data = ml_collections.ConfigDict(dict(
      source="random", path="", workers=0, prefetch=2,
      vqgan="", clip="", image_size=256, crop="random"))

  # The paper's sampler settings, per editing mode (paella_jax/sampler_settings.py).
  c.sampling = ml_collections.ConfigDict(copy.deepcopy(dict(PAELLA_V1.sampler_defaults)))
  return c
