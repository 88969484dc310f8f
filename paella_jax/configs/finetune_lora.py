"""LoRA fine-tuning of a trained model on your own images (`paella_jax.lora`):

    paella-train --config finetune_lora --config.train.init_from=ckpts/paella_v1 \
        --config.data.path=data/my_records --workdir runs/my_lora
    paella-train --config paella_jax/configs/finetune_lora.py:paella_v3 ...   # Paella v3

The argument after ":" names the preset of the base model's architecture (paella_v1 by default;
paella_v3, tiny, tiny_v3; configs/demo_lora.py builds on `with_lora` for the demo's model): the
trainer checks that config.train.init_from holds
exactly that architecture. Only the adapters train (rank 8, alpha 8, the family's default target
layers; `config.train.lora`); the base stays frozen in `lora.base_dtype`; the optimizer state and
the EMA cover only the adapters, and the run ends by writing WORKDIR/adapter.safetensors
(`paella-sample --lora`, `paella-convert merge-lora`). Everything else is the base preset's
training (mesh, data, conditioning dropout, checkpoints with exact resume), with a fine-tuning
schedule: a rate of 1e-4 for 1000 steps.
"""

import importlib

import ml_collections


def get_config(base: str = "paella_v1"):
  return with_lora(importlib.import_module(f"paella_jax.configs.{base}").get_config())


def with_lora(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A token predictor's training config `c`, made a LoRA fine-tuning of it (changed in place)."""
  c.train.lora = ml_collections.ConfigDict(dict(
      rank=8, alpha=8.0, dropout=0.0,
      targets="",             # a regex over module paths; "" = the family's Family.lora_targets
      base_dtype="float32"))  # "bfloat16" halves the frozen base's memory
  c.train.update(learning_rate=1e-4, total_steps=1000, warmup_steps=50, checkpoint_every=250,
                 ema_decay=0.0, init_from="")
  return c
