"""The built-in demo with Paella v3 (`python train.py --config configs/demo_v3.py`), on CPU.

The v1 demo's scenes, stage 1 (the tiny VQGAN), CLIP and evaluation (configs/demo.py), with a
tiny Paella v3 token predictor as stage 2: conditioned through cross-attention on the hidden
states of a tiny ByT5 encoder with RANDOM frozen weights (configs/t5_tiny.py, run in the train
step on the captions' byte ids) and on the CLIP text and image embeddings of the demo's random
frozen CLIP. Writes runs/demo_v3: the same report.json as the v1 demo, and paella/model, which
`python sample.py --checkpoint runs/demo_v3/paella/model --prompt "..."` samples with no more
flags (its model.json names the demo's ByT5, CLIP and VQGAN).
"""

from paella_jax.configs import demo, t5_tiny, tiny_v3


def get_config():
  c = demo.get_config()
  c.workdir = "runs/demo_v3"  # train.py's default --workdir for this job
  c.byt5 = t5_tiny.get_config()
  c.paella = tiny_v3.get_config()
  c.paella.byt5 = c.byt5  # the step encodes byte ids with these (seeded) weights
  c.paella.vqgan = c.vqgan
  c.paella.latent_shape = (8, 8)
  c.paella.model.update(num_labels=c.vqgan.model.n_embed, clip_embd=c.clip.model.projection_dim,
                        byt5_embd=c.byt5.model.d_model, patch_size=1)
  c.paella.data.update(source="records", byt5_buckets=(48,))  # captions: at most 38 bytes
  c.paella.train.update(total_steps=1500, batch_size=64, learning_rate=2e-3, warmup_steps=100,
                        byt5_drop_prob=0.1, clip_keep_prob=0.5, clip_image_keep_prob=0.1,
                        log_every=50, checkpoint_every=500)
  c.paella.sampling.update(steps=8, cfg=(3.0, 3.0))
  return c
