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
