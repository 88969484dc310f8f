"""The built-in default job (`python train.py` with no arguments): the whole system on CPU.

The recipe of every stage is stated here, once; configs/folder.py runs the same on your images.
Procedural captioned scenes (paella_jax/data/scenes.py) -> a tiny VQGAN trained from scratch
(stage 1) -> images encoded to 8x8 codes (out of 64) and captions to embeddings of a tiny CLIP
text tower with RANDOM frozen weights (seeded) -> a tiny Paella token predictor (stage 2) ->
samples for every (colour, shape, position) prompt, scored by the deterministic adherence
analyser.

The text tower is random and frozen (not trained contrastively): a random causal transformer
already maps the 72 distinct captions to distinct, stable embeddings, which is all the token
predictor needs to learn the mapping; training CLIP here would cost minutes and prove nothing
about Paella.
"""

import ml_collections

from paella_jax.configs import clip_tiny, tiny, vqgan_tiny


def get_config():
  c = ml_collections.ConfigDict()
  c.job = "pipeline"  # paella-train runs every stage (paella_jax/training/end_to_end.py)
  c.workdir = "runs/demo"  # paella-train's default --workdir for this config
  c.seed = 0  # the evaluation's samples
  c.vqgan = vqgan_tiny.get_config()
  c.data = c.vqgan.data  # one section: stage 1, the prepared records and the samples read it
  c.data.update(source="scenes", num_images=4096, seed=0)
  # Stage 1 has to keep the shapes: many small steps, then a cosine decay of the rate. Batch 8
  # for 4800 steps sees the images of batch 32 for 1200 steps, and keeps 94% of the shapes
  # instead of 46%; more codes (256, with restarts) did less (docs/training.md).
  c.vqgan.train.update(total_steps=4800, batch_size=8, lr_decay_steps=1200, log_every=200,
                       checkpoint_every=2400)
  c.clip = clip_tiny.get_config()
  c.paella = tiny.get_config()
  c.paella.vqgan = c.vqgan
  c.paella.model.num_labels = c.vqgan.model.n_embed
  # Stage 2 is sampled from an EMA of its weights (decay 0.998, about the last 500 steps):
  # more squares keep their corners (docs/training.md measures each choice of stage 2).
  c.paella.train.update(total_steps=2000, batch_size=64, learning_rate=2e-3, warmup_steps=100,
                        cond_drop_prob=0.1, cond_drop_mode="sample", ema_decay=0.998,
                        log_every=50, checkpoint_every=1000)
  c.paella.export.weights = "ema"
  c.paella.data.source = "records"  # written by the demo through paella_jax.data.prepare
  # 12 steps, renoising from the previous step's tokens, typical mass 0.5: seen shape 91.3%,
  # against 89.5% in 8 steps and 88.3% renoising from the start noise (the paper's choices).
  c.paella.sampling.update(steps=12, cfg=3.0, typical_mass=0.5, renoise_mode="prev")
  c.eval = ml_collections.ConfigDict(dict(
      samples_per_prompt=16,             # 1088 images of the 68 seen prompts
      held_out_samples_per_prompt=32))   # 128 images of the 4 held-out prompts
  return c
