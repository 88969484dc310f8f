"""LoRA on the demo's model: teach it a shape it never saw (docs/finetune.md, worked example).

    python train.py                                   # the demo, once (runs/demo)
    paella-train --config demo_lora                   # -> runs/demo_lora/adapter.safetensors
    paella-eval --data demo:rectangle --lora runs/demo_lora/adapter.safetensors --out eval_out/lora

The demo's scenes show circles, squares and triangles; this run trains rank-16 adapters of the
demo's token predictor (runs/demo/paella/model, frozen) on wide rectangles ("a red rectangle in
the top left": 24 prompts) mixed with the shapes it knows, so that it learns the new one
without forgetting the old: 192 generated images, 52 of them rectangles, encoded on the fly by
the demo's VQGAN and CLIP. `--config.data.shapes="('rectangle',)"` trains on rectangles
alone (learns faster, forgets the rest). A new colour would not do: the demo's VQGAN never saw
one, so no choice of its codes shows one (docs/finetune.md measures both).
"""

from paella_jax.configs import demo, finetune_lora
from paella_jax.data.scenes import NEW_SHAPES, SHAPES


def get_config():
  base = demo.get_config()
  c = finetune_lora.with_lora(base.paella)
  c.workdir = "runs/demo_lora"  # paella-train's default --workdir for this config
  c.data.update(source="scenes", shapes=NEW_SHAPES + SHAPES, num_images=192, seed=1,
                vqgan="runs/demo/vqgan/model", clip="runs/demo/clip", image_size=32,
                crop="center")
  c.train.init_from = "runs/demo/paella/model"
  c.train.lora.update(rank=16, alpha=16.0)
  c.train.update(batch_size=16, total_steps=1500, learning_rate=1e-3, warmup_steps=20,
                 log_every=50, checkpoint_every=500)
  c.export.weights = "params"
  return c
