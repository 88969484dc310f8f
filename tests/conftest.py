import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"  # outputs of the original PyTorch code (see its README)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
  return FIXTURES


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
  """A tiny random token predictor, CLIP (with vision tower) and VQGAN saved as checkpoints:
  DIR/model (recording ../clip and ../vqgan), DIR/clip, DIR/vqgan."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from configs import clip_tiny, tiny, vqgan_tiny
  from paella_jax.checkpoint import save_model
  from paella_jax.encoders.clip import random_clip, save_clip
  from paella_jax.encoders.vq import save_vqgan
  from paella_jax.models.paella import build_model
  from paella_jax.models.vqgan import vqgan_from_config
  root = tmp_path_factory.mktemp("tiny_checkpoints")
  save_clip(root / "clip", *random_clip(clip_tiny.get_config().model))
  vq = vqgan_from_config(vqgan_tiny.get_config().model)
  save_vqgan(root / "vqgan", vq, vq.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  config = tiny.get_config()
  model = build_model(config.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8), jnp.int32), jnp.zeros((1, 32)),
                      jnp.zeros((1,)))["params"]
  params = jax.tree.map(lambda p: p * 3, nn.meta.unbox(params))  # confident, varied samples
  save_model(root / "model", params, "paella_v1", model.architecture(),
             meta={"latent_shape": [8, 8], "sampling": config.sampling.to_dict(),
                   "clip_checkpoint": "../clip", "vqgan_checkpoint": "../vqgan"})
  return root


@pytest.fixture(scope="session")
def v3_model(tiny_checkpoints, tmp_path_factory) -> str:
  """DIR/model: a tiny random PaellaV3 whose model.json records DIR/byt5 (a tiny random ByT5)
  and the session's tiny CLIP and VQGAN, as the converter records them."""
  import jax
  import numpy as np
  from configs import t5_tiny, tiny_v3
  from paella_jax.checkpoint import save_model
  from paella_jax.families import PAELLA_V3
  from paella_jax.convert.paella_v3 import encoder_records
  from paella_jax.encoders.byt5 import random_t5_encoder, save_t5_encoder
  from paella_jax.models.paella_v3 import build_model, init_params
  root = tmp_path_factory.mktemp("tiny_v3")
  t5 = t5_tiny.get_config()
  save_t5_encoder(root / "byt5", *random_t5_encoder(t5.model, seed=t5.seed))
  config = tiny_v3.get_config()
  config.model.update(byt5_embd=t5.model["d_model"], clip_embd=32)  # the tiny encoders' widths
  model = build_model(config.model)
  # Random values everywhere (the init zeroes the output map): confident logits that depend on
  # the tokens, the noise level and every conditioning entry.
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (8, 8)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32) * 0.5, shapes)
  out = root / "model"
  save_model(out, params, "paella_v3", model.architecture(),
             meta={"latent_shape": [8, 8], "sampling": dict(PAELLA_V3.sampler_defaults, steps=4),
                   **encoder_records(str(out), byt5=str(root / "byt5"),
                                     clip=str(tiny_checkpoints / "clip"),
                                     vqgan=str(tiny_checkpoints / "vqgan"))})
  return str(out)
