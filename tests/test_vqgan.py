"""VQGAN ports against the original PyTorch code: ruDALL-E's Gumbel VQGAN (fixture), taming's
Encoder/Decoder and quantizers, diffusers' VQModel and PaellaVQModel (random weights, built here)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paella_jax.convert.torch_io import CheckpointMismatchError
from paella_jax.convert.vqgan import vqgan_from_torch
from paella_jax.encoders.vq import VQGANCodec, load_vqgan
from paella_jax.models.vqgan import VQGAN, vqgan_config, vqgan_from_config

torch = pytest.importorskip("torch")

TOL = 1e-4


def reference_dir() -> Path:
  return Path(__file__).resolve().parent / "fixtures"


def randomize(model, seed: int, scale: float = 0.2):
  """Gives every parameter and buffer of a torch module a random value (variances positive)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
      if t.is_floating_point():
        r = torch.randn(t.shape, generator=gen) * scale
        t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)
  return model.eval()


def nchw(x: np.ndarray) -> "torch.Tensor":
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: "torch.Tensor") -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def random_images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def assert_matches(module, params, images, ref_codes, ref_decoded):
  """Codes identical, unclamped decode within TOL."""
  encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))
  decode = jax.jit(lambda p, c: module.apply({"params": p}, c, method="decode_codes_raw"))
  codes = encode(params, images)
  assert codes.dtype == jnp.int32 and codes.shape == ref_codes.shape
  np.testing.assert_array_equal(np.asarray(codes), ref_codes)
  decoded = decode(params, codes)
  np.testing.assert_allclose(np.asarray(decoded), ref_decoded, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def rudalle():
  ref = reference_dir()
  module, params = vqgan_from_torch(ref / "rudalle_gumbel_vqgan_tiny.ckpt", resolution=32)
  return module, params, np.load(ref / "rudalle_gumbel_vqgan_tiny_io.npz", allow_pickle=True)


def test_rudalle_gumbel_fixture(rudalle):
  module, params, io = rudalle
  assert (module.quantizer, module.factor, module.n_embed, module.attn_resolutions) == (
      "gumbel", 4, 48, (8,))
  images = io["image"].transpose(0, 2, 3, 1)
  logits = module.apply({"params": params}, images, method="quantizer_logits")
  np.testing.assert_allclose(np.asarray(logits), io["quant_logits"].transpose(0, 2, 3, 1),
                             atol=TOL, rtol=0)
  assert_matches(module, params, images, io["indices"], io["decoded"].transpose(0, 2, 3, 1))
  out = module.apply({"params": params}, io["indices"], method="decode_codes")
  expected = (np.clip(io["decoded"], -1, 1) + 1) / 2
  np.testing.assert_allclose(np.asarray(out), expected.transpose(0, 2, 3, 1), atol=TOL)


def test_gumbel_sampled_encode(rudalle):
  """With a key, encode draws argmax(logits + Gumbel noise): reproducible, mostly the argmax."""
  module, params, io = rudalle
  images = io["image"].transpose(0, 2, 3, 1)
  key = jax.random.PRNGKey(3)
  a = module.apply({"params": params}, images, key, method="encode")
  b = module.apply({"params": params}, images, key, method="encode")
  np.testing.assert_array_equal(a, b)
  logits = module.apply({"params": params}, images, method="quantizer_logits")
  noise = jax.random.gumbel(key, logits.shape)
  np.testing.assert_array_equal(a, jnp.argmax(logits + noise, -1))
  assert 0 < np.mean(np.asarray(a) != io["indices"]) < 1


# ---------------------------------------------------------------------------------- taming

def taming_state_dict(cfg: dict, quantizer: str, seed: int):
  """A random taming VQGAN state_dict and a reference (codes, decoded) function on NHWC images."""
  from taming.modules.diffusionmodules.model import Decoder, Encoder
  from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
  torch.manual_seed(seed)
  enc = randomize(Encoder(**cfg, double_z=False), seed)
  dec = randomize(Decoder(**cfg), seed + 1)
  z, e, n = cfg["z_channels"], cfg["embed_dim"], cfg["n_embed"]
  quant_conv = torch.nn.Conv2d(z, z if quantizer == "gumbel" else e, 1)
  quantize = (GumbelQuantize(z, e, n) if quantizer == "gumbel" else VectorQuantizer2(n, e, 0.25))
  post = torch.nn.Conv2d(e, z, 1)
  parts = {"encoder": enc, "decoder": dec, "quant_conv": quant_conv, "quantize": quantize,
           "post_quant_conv": post}
  for i, m in enumerate(parts.values()):
    randomize(m, seed + 10 + i, scale=0.2 if m not in (quantize,) else 1.0)
  state_dict = {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}

  @torch.no_grad()
  def reference(images):
    h = quant_conv(enc(2 * nchw(images) - 1))
    if quantizer == "gumbel":
      codes = quantize.proj(h).argmax(1)
      zq = quantize.embed.weight[codes].permute(0, 3, 1, 2)
    else:
      zq, _, (_, _, codes) = quantize(h)
      codes = codes.reshape(h.shape[0], h.shape[2], h.shape[3])
    return codes.numpy(), nhwc(dec(post(zq)))

  return state_dict, reference


TAMING_CONFIGS = {
    # several attention levels, f=8, non-square images
    "attn_16_8_4": (dict(ch=32, out_ch=3, ch_mult=(1, 1, 2, 2), num_res_blocks=1,
                         attn_resolutions=(16, 8, 4), in_channels=3, resolution=32, z_channels=16,
                         embed_dim=8, n_embed=40), "vq", (1, 24, 40, 3)),
    # the Gumbel quantizer with another ch_mult and no attention outside the middle
    "gumbel_noattn": (dict(ch=32, out_ch=3, ch_mult=(2, 1), num_res_blocks=1,
                           attn_resolutions=(), in_channels=3, resolution=16, z_channels=8,
                           embed_dim=12, n_embed=24), "gumbel", (1, 12, 20, 3)),
}


@pytest.mark.parametrize("name", sorted(TAMING_CONFIGS))
def test_taming_configs(name):
  cfg, quantizer, image_shape = TAMING_CONFIGS[name]
  state_dict, reference = taming_state_dict(cfg, quantizer, seed=len(name))
  module, params = vqgan_from_torch(state_dict, resolution=cfg["resolution"])
  assert module.quantizer == quantizer
  assert set(module.attn_resolutions) == set(cfg["attn_resolutions"])
  images = random_images(image_shape, seed=1)
  assert_matches(module, params, images, *reference(images))


# ---------------------------------------------------------------------------------- diffusers

def diffusers_vqmodel(tmp_path, seed, **config):
  from diffusers import VQModel
  model = randomize(VQModel(**config), seed)
  model.save_pretrained(tmp_path)

  @torch.no_grad()
  def reference(images):
    h = model.encode(2 * nchw(images) - 1).latents
    _, _, (_, _, codes) = model.quantize(h)
    return (codes.reshape(h.shape[0], h.shape[2], h.shape[3]).numpy(),
            nhwc(model.decode(h).sample))

  return reference


VQMODEL_CONFIGS = {
    "attn_levels": dict(block_out_channels=(16, 32), layers_per_block=1,
                        down_block_types=("AttnDownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                        up_block_types=("AttnUpDecoderBlock2D", "AttnUpDecoderBlock2D"),
                        latent_channels=6, vq_embed_dim=5, num_vq_embeddings=32, norm_num_groups=8),
    "no_mid_attention": dict(block_out_channels=(16, 32), layers_per_block=2,
                             down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                             num_vq_embeddings=24, norm_num_groups=4,
                             mid_block_add_attention=False),
}


@pytest.mark.parametrize("name", sorted(VQMODEL_CONFIGS))
def test_diffusers_vqmodel(tmp_path, name):
  config = VQMODEL_CONFIGS[name]
  reference = diffusers_vqmodel(tmp_path, seed=len(name), **config)
  module, params = vqgan_from_torch(tmp_path)
  assert module.quantizer == "vq" and module.norm_groups == config["norm_num_groups"]
  images = random_images((2, 16, 24, 3), seed=2)
  assert_matches(module, params, images, *reference(images))


def test_diffusers_paella_vq(tmp_path):
  from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
  model = randomize(PaellaVQModel(levels=3, bottleneck_blocks=2, embed_dim=32, latent_channels=4,
                                  num_vq_embeddings=20), seed=5)
  model.save_pretrained(tmp_path)
  module, params = vqgan_from_torch(tmp_path)
  assert module.factor == 8 and module.n_embed == 20
  images = random_images((2, 16, 24, 3), seed=3)
  with torch.no_grad():
    h = model.encode(nchw(images)).latents
    _, _, (_, _, codes) = model.vquantizer(h)
    codes = codes.reshape(h.shape[0], h.shape[2], h.shape[3]).numpy()
    decoded = nhwc(model.decode(h, force_not_quantize=False).sample)
  assert_matches(module, params, images, codes, decoded)
  out = module.apply({"params": params}, codes, method="decode_codes")
  np.testing.assert_allclose(np.asarray(out), np.clip(decoded, 0, 1), atol=TOL)


# ---------------------------------------------------------------------------------- API

def test_checkpoint_roundtrip_and_cli(rudalle, tmp_path):
  from paella_jax.commands.convert import main
  module, params, io = rudalle
  assert vqgan_from_config(vqgan_config(module)) == module
  out = tmp_path / "vq"
  main(["vqgan", str(reference_dir() / "rudalle_gumbel_vqgan_tiny.ckpt"), str(out),
        "--resolution", "32"])
  loaded, loaded_params = load_vqgan(out)
  assert loaded == module
  images = io["image"].transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(loaded.apply({"params": loaded_params}, images, method="encode"),
                                io["indices"])


def test_codec_batched_and_bf16(rudalle):
  """Data-parallel jit encode/decode equals `apply` for any batch size; bf16 stays close."""
  module, params, io = rudalle
  images = np.concatenate([io["image"].transpose(0, 2, 3, 1)] * 3)[:5]  # 5: chunks of 2, padded
  codec = VQGANCodec(module, params, batch_size=2)
  codes = codec.encode(images)
  np.testing.assert_array_equal(codes, module.apply({"params": params}, images, method="encode"))
  decoded = codec.decode(codes)
  assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
  np.testing.assert_allclose(decoded, module.apply({"params": params}, codes,
                                                   method="decode_codes"), atol=1e-5)
  bf16 = VQGANCodec(module, params, batch_size=2, dtype=jnp.bfloat16)
  error = np.abs(bf16.decode(codes) - decoded)  # random weights: about 0.04 max, 0.005 mean
  assert error.max() < 0.1 and error.mean() < 0.02
  assert np.mean(bf16.encode(images) == codes) > 0.8
  # other sizes that are multiples of f (a larger canvas, as for outpainting)
  assert codec.encode(random_images((1, 12, 20, 3))).shape == (1, 3, 5)
  assert codec.decode(np.zeros((1, 3, 7), np.int32)).shape == (1, 12, 28, 3)


@pytest.mark.parametrize("images, message", [
    (np.full((1, 8, 8, 3), 1.5, np.float32), r"in \[0, 1\]"),
    (np.full((1, 8, 8, 3), -0.1, np.float32), r"in \[0, 1\]"),
    (np.full((8, 8, 3), 0.5, np.float32), "shape"),
    (np.full((1, 8, 8, 4), 0.5, np.float32), "shape"),
    (np.full((1, 8, 10, 3), 0.5, np.float32), "multiples of the VQGAN's downsampling factor 4"),
])
def test_bad_images(rudalle, images, message):
  module, params, _ = rudalle
  with pytest.raises(ValueError, match=message):
    module.apply({"params": params}, images, method="encode")
  with pytest.raises(ValueError, match=message):
    VQGANCodec(module, params).encode(images)


@pytest.mark.parametrize("codes, message", [
    (np.full((1, 2, 2), 48), r"in \[0, 48\)"),
    (np.full((1, 2, 2), -1), r"in \[0, 48\)"),
    (np.zeros((2, 2), np.int32), "shape"),
    (np.zeros((1, 2, 2), np.float32), "integers"),
])
def test_bad_codes(rudalle, codes, message):
  module, params, _ = rudalle
  with pytest.raises(ValueError, match=message):
    module.apply({"params": params}, codes, method="decode_codes")


def test_wrong_checkpoints(tmp_path):
  ref = reference_dir()
  with pytest.raises(CheckpointMismatchError, match="not a supported VQGAN"):
    vqgan_from_torch(ref / "paella_v1_tiny.pt")
  state_dict = torch.load(ref / "rudalle_gumbel_vqgan_tiny.ckpt", weights_only=True)["state_dict"]
  del state_dict["decoder.up.1.block.0.conv2.weight"]
  state_dict["decoder.conv_in.bias"] = torch.zeros(7)
  with pytest.raises(CheckpointMismatchError) as e:
    vqgan_from_torch(state_dict, resolution=32)
  assert "decoder.up.1.block.0.conv2.weight" in str(e.value)
  assert "decoder.conv_in.bias: checkpoint (7,)" in str(e.value)
  with pytest.raises(FileNotFoundError):
    vqgan_from_torch(tmp_path / "missing.ckpt")


def test_vqgan_from_config_errors():
  with pytest.raises(ValueError, match="unknown VQGAN architecture"):
    vqgan_from_config({"architecture": "vae"})
  with pytest.raises(ValueError, match="unknown VQGAN config fields: chan"):
    vqgan_from_config({"chan": 3})
  assert isinstance(vqgan_from_config({"ch": 32}), VQGAN)
