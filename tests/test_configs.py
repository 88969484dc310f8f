"""Each model config pairs with a VQGAN and a CLIP whose shapes fit it."""

import pytest

from configs import demo, paella_v1, tiny


@pytest.mark.parametrize("config", [paella_v1.get_config(), tiny.get_config()])
def test_model_pairs_with_its_tokenizer_and_text_encoder(config):
  vq = config.vqgan.model
  assert vq.n_embed == config.model.num_labels
  assert config.clip.model.projection_dim == config.model.c_clip
  factor = 2 ** (len(vq.ch_mult) - 1)
  assert config.vqgan.image_size // factor == config.latent_shape[0]


def test_demo_stages_fit_together():
  c = demo.get_config()
  assert c.vqgan.model.n_embed == c.paella.model.num_labels
  assert c.clip.model.projection_dim == c.paella.model.c_clip


def test_paella_v3_pairs_with_the_f4_vqgan():
  from configs import paella_v3, vqgan_paella_f4
  from paella_jax.models.vqgan import vqgan_from_config
  c, vq = paella_v3.get_config(), vqgan_paella_f4.get_config()
  module = vqgan_from_config(vq.model)
  assert vq.model.n_embed == c.model.num_labels
  assert vq.image_size // module.factor == c.latent_shape[0]
