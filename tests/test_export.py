"""Export to PyTorch (`paella_jax.convert.to_torch`): original weights -> our checkpoint ->
to-torch -> the original PyTorch modules (the v1 and v3 references, taming, diffusers) reproduce
the original outputs; a model trained in JAX exports to the same logits; bad requests fail
clearly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from paella_jax.checkpoint import load_model, save_model
from paella_jax.convert import paella_v1_from_torch, paella_v3_from_torch, vqgan_from_torch
from paella_jax.commands.convert import main
from paella_jax.convert.to_torch import EXPORT_RECORD, to_torch, torch_state_dict
from paella_jax.encoders.vq import save_vqgan
from paella_jax.models.paella import build_model
from tests.test_paella_v3_model import CONDITIONINGS, fixture_config
from tests.test_vqgan import (TAMING_CONFIGS, nchw, nhwc, random_images, randomize,
                              taming_state_dict)
from tests.torch_reference import ReferenceUNet
from tests.torch_reference_v3 import ReferenceV3

TOL = 1e-5
V1_ARCH = (64, 64, 32, 64, [1, 2, 2], [2, 2, 1])  # the fixture's DenoiseUNet


def load_file(path):
  if str(path).endswith(".safetensors"):
    from safetensors.torch import load_file as load
    return load(path)
  return torch.load(path, weights_only=True)


def assert_same_tensors(exported, original):
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key


# ---------------------------------------------------------------------------------- Paella v1

@pytest.fixture(scope="module")
def v1_checkpoint(reference_dir, tmp_path_factory):
  model, params = paella_v1_from_torch(reference_dir / "paella_v1_tiny.pt")
  return save_model(tmp_path_factory.mktemp("v1") / "model", params, "paella_v1",
                    model.architecture())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_v1_fixture_round_trip(v1_checkpoint, reference_dir, tmp_path, suffix):
  out = to_torch(v1_checkpoint, tmp_path / f"paella{suffix}")
  state_dict = load_file(out)
  assert_same_tensors(state_dict, torch.load(reference_dir / "paella_v1_tiny.pt",
                                             weights_only=True))
  ref = ReferenceUNet(*V1_ARCH).eval()
  ref.load_state_dict(state_dict, strict=True)
  io = np.load(reference_dir / "paella_v1_tiny_io.npz")
  with torch.no_grad():
    x, r = torch.tensor(io["x"]), torch.tensor(io["r"])
    for c, expected in ((io["c"], io["logits"]), (io["c_map"], io["logits_map"])):
      np.testing.assert_allclose(ref(x, torch.tensor(c), r).numpy(), expected, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained three steps with EMA, exported by the trainer as EMA in bfloat16."""
  from configs import tiny
  from paella_jax.training.loop import train
  config = tiny.get_config()
  config.model.update(c_hidden=32, down_levels=(1, 1), up_levels=(1, 1))
  config.train.update(batch_size=4, total_steps=3, warmup_steps=1, log_every=3,
                      checkpoint_every=3, ema_decay=0.5)
  config.export.update(weights="ema", dtype="bfloat16")
  workdir = tmp_path_factory.mktemp("trained")
  state = train(config, str(workdir), progress=False)
  return workdir / "model", state


@pytest.mark.slow  # trains (compiles a train step): ~30 s on 2 idle CPU cores
def test_trained_model_exports_to_the_same_logits(trained, tmp_path):
  model_dir, state = trained
  _, config, params = load_model(model_dir)
  as_stored = load_file(to_torch(model_dir, tmp_path / "stored.pt"))
  upcast = load_file(to_torch(model_dir, tmp_path / "upcast.safetensors", upcast=True))
  # the EMA weights, as the checkpoint holds them (bfloat16), or upcast on request
  assert {t.dtype for t in as_stored.values()} == {torch.bfloat16}
  assert {t.dtype for t in upcast.values()} == {torch.float32}
  ema = np.asarray(state.ema_params["clf"]["bias"], jnp.bfloat16)
  raw = np.asarray(state.params["clf"]["bias"], jnp.bfloat16)
  np.testing.assert_array_equal(as_stored["clf.bias"].float().numpy(), ema.astype(np.float32))
  assert not np.array_equal(ema, raw)
  for key in as_stored:
    assert torch.equal(as_stored[key].float(), upcast[key]), key

  model = build_model(config)
  ref = ReferenceUNet(**config).eval()
  ref.load_state_dict(upcast, strict=True)
  rng = np.random.default_rng(0)
  x = rng.integers(0, config["num_labels"], (2, 8, 8))
  c = rng.standard_normal((2, config["c_clip"])).astype(np.float32)
  r = np.array([0.2, 0.9], np.float32)
  logits = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(c), jnp.asarray(r))
  stored = ReferenceUNet(**config).eval()
  stored.load_state_dict(as_stored, strict=True)  # bfloat16 tensors load into float32 modules
  with torch.no_grad():
    expected = ref(torch.tensor(x), torch.tensor(c), torch.tensor(r)).numpy()
    np.testing.assert_array_equal(stored(torch.tensor(x), torch.tensor(c), torch.tensor(r)).numpy(),
                                  expected)
  np.testing.assert_allclose(np.asarray(logits), expected.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------- Paella v3

def test_v3_fixture_round_trip(reference_dir, tmp_path):
  """q, k and v go back into MultiheadAttention's packed in_proj tensors, bit for bit."""
  source = reference_dir / "paella_v3_tiny.pt"
  model, params = paella_v3_from_torch(source, nhead=[-1, 4, 4])
  ckpt = save_model(tmp_path / "v3", params, "paella_v3", model.architecture())
  state_dict = load_file(to_torch(ckpt, tmp_path / "paella_v3.safetensors"))
  assert_same_tensors(state_dict, torch.load(source, weights_only=True))
  io = np.load(reference_dir / "paella_v3_tiny_io.npz")
  ref = ReferenceV3(**fixture_config(io)).eval()
  ref.load_state_dict(state_dict, strict=True)
  t = lambda k: torch.from_numpy(io[k])
  with torch.no_grad():
    for which, extra in CONDITIONINGS.items():
      out = ref(t("x"), t("r"), t("byt5"), **{k: t(k) for k in extra})
      np.testing.assert_allclose(out.numpy(), io[f"logits_{which}"], atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------- VQGANs

class TamingVQGAN(torch.nn.Module):
  """The parts of taming's VQModel/GumbelVQ that hold weights, under their attribute names."""

  def __init__(self, cfg, quantizer):
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
    super().__init__()
    z, e, n = cfg["z_channels"], cfg["embed_dim"], cfg["n_embed"]
    self.encoder, self.decoder = Encoder(**cfg, double_z=False), Decoder(**cfg)
    self.quant_conv = torch.nn.Conv2d(z, z if quantizer == "gumbel" else e, 1)
    self.quantize = (GumbelQuantize(z, e, n) if quantizer == "gumbel"
                     else VectorQuantizer2(n, e, 0.25))
    self.post_quant_conv = torch.nn.Conv2d(e, z, 1)


def test_rudalle_gumbel_round_trip(reference_dir, tmp_path):
  source = reference_dir / "rudalle_gumbel_vqgan_tiny.ckpt"
  module, params = vqgan_from_torch(source, resolution=32)
  ckpt = save_vqgan(tmp_path / "vq", module, params)
  exported = load_file(to_torch(ckpt, tmp_path / "vqgan.ckpt"))
  assert set(exported) == {"state_dict"}  # the Lightning layout taming and ruDALL-E read
  assert_same_tensors(exported["state_dict"], load_file(source)["state_dict"])
  vq = TamingVQGAN(dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(8,), in_channels=3, resolution=32, z_channels=32,
                        embed_dim=32, n_embed=48), "gumbel").eval()
  vq.load_state_dict(exported["state_dict"], strict=True)
  io = np.load(reference_dir / "rudalle_gumbel_vqgan_tiny_io.npz")
  with torch.no_grad():
    logits = vq.quantize.proj(vq.quant_conv(vq.encoder(2 * torch.tensor(io["image"]) - 1)))
    z_q = vq.quantize.embed.weight[torch.tensor(io["indices"])].permute(0, 3, 1, 2)
    decoded = vq.decoder(vq.post_quant_conv(z_q))
  np.testing.assert_allclose(logits.numpy(), io["quant_logits"], atol=TOL, rtol=0)
  np.testing.assert_allclose(decoded.numpy(), io["decoded"], atol=TOL, rtol=0)


def test_taming_vq_to_diffusers_directory(tmp_path):
  """taming weights -> ours -> a diffusers VQModel directory computing what taming computes."""
  from diffusers import VQModel
  cfg, quantizer, _ = TAMING_CONFIGS["attn_16_8_4"]
  state_dict, reference = taming_state_dict(cfg, quantizer, seed=3)
  module, params = vqgan_from_torch(state_dict, resolution=cfg["resolution"])
  out = to_torch(save_vqgan(tmp_path / "vq", module, params), tmp_path / "diffusers")
  model = VQModel.from_pretrained(out).eval()
  images = random_images((1, 16, 24, 3), seed=1)
  codes, decoded = reference(images)
  with torch.no_grad():
    h = model.encode(2 * nchw(images) - 1).latents
    _, _, (_, _, indices) = model.quantize(h)
    ours = nhwc(model.decode(h).sample)
  np.testing.assert_array_equal(indices.reshape(codes.shape).numpy(), codes)
  np.testing.assert_allclose(ours, decoded, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["vqmodel", "paella_vq"])
def test_diffusers_round_trip(tmp_path, name):
  """diffusers weights -> ours -> a diffusers directory with the same config and tensors."""
  from diffusers import VQModel
  from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
  if name == "vqmodel":
    cls = VQModel
    original = cls(block_out_channels=(16, 32), layers_per_block=1,
                   down_block_types=("AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
                   up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D"),
                   latent_channels=6, vq_embed_dim=5, num_vq_embeddings=32, norm_num_groups=8)
  else:
    cls = PaellaVQModel
    original = cls(levels=3, bottleneck_blocks=2, embed_dim=32, latent_channels=4,
                   num_vq_embeddings=20)
  randomize(original, seed=7)
  original.save_pretrained(tmp_path / "original")
  module, params = vqgan_from_torch(tmp_path / "original")
  out = to_torch(save_vqgan(tmp_path / "vq", module, params), tmp_path / "export")
  exported = cls.from_pretrained(out).eval()
  shown = lambda c: json.loads(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}))
  assert shown(exported.config) == shown(original.config)
  assert_same_tensors(exported.state_dict(), original.state_dict())
  images = nchw(random_images((2, 16, 24, 3), seed=4))
  with torch.no_grad():
    decoded = [m.decode(m.encode(images).latents).sample.numpy() for m in (exported, original)]
  np.testing.assert_allclose(*decoded, atol=TOL, rtol=0)
  if cls is PaellaVQModel:  # as a file: the layout of Paella v3's own vqgan_f4.pt
    flat = load_file(to_torch(tmp_path / "vq", tmp_path / "vq.pt"))
    flat["vquantizer.embedding.weight"] = flat.pop("vquantizer.codebook.weight")
    assert_same_tensors(flat, original.state_dict())
    jax.tree.map(np.testing.assert_array_equal, vqgan_from_torch(tmp_path / "vq.pt")[1], params)
  else:  # taming's code fixes GroupNorm(32): this VQModel (8 groups) has no taming file
    with pytest.raises(ValueError, match="norm_groups=8: write a diffusers directory"):
      to_torch(tmp_path / "vq", tmp_path / "vq.safetensors")


# ---------------------------------------------------------------------------------- CLI, errors

def test_cli_and_overwrite(v1_checkpoint, tmp_path, capsys):
  out = tmp_path / "paella.pt"
  main(["to-torch", str(v1_checkpoint), str(out)])
  assert "paella_v1" in capsys.readouterr().out
  out.write_bytes(b"an older export")
  with pytest.raises(FileExistsError, match="overwrite"):
    to_torch(v1_checkpoint, out)
  assert out.read_bytes() == b"an older export"
  main(["to-torch", str(v1_checkpoint), str(out), "--overwrite"])
  assert sorted(load_file(out)) == sorted(torch_state_dict(v1_checkpoint))
  # --overwrite replaces a file, or a directory that to-torch wrote, nothing else
  folder = tmp_path / "folder.pt"
  folder.mkdir()
  with pytest.raises(FileExistsError, match="not a file"):
    to_torch(v1_checkpoint, folder, overwrite=True)
  foreign = tmp_path / "someone_elses_model"
  foreign.mkdir()
  (foreign / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match=EXPORT_RECORD):
    to_torch(v1_checkpoint, foreign, overwrite=True)
  assert (foreign / "config.json").read_text() == "{}"


def test_diffusers_directory_is_replaced_only_with_overwrite(tmp_path):
  from diffusers import VQModel
  original = randomize(VQModel(block_out_channels=(8,), latent_channels=4, norm_num_groups=4,
                               num_vq_embeddings=8), seed=2)
  original.save_pretrained(tmp_path / "original")
  ckpt = save_vqgan(tmp_path / "vq", *vqgan_from_torch(tmp_path / "original"))
  out = tmp_path / "export"
  to_torch(ckpt, out)
  record = json.loads((out / EXPORT_RECORD).read_text())
  assert record["kind"] == "vqgan" and record["source"] == str(ckpt)
  with pytest.raises(FileExistsError, match="overwrite"):
    to_torch(ckpt, out)
  (out / "stale.txt").write_text("from the previous export")
  to_torch(ckpt, out, overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["config.json", "diffusion_pytorch_model.safetensors", EXPORT_RECORD])


def test_clear_errors(v1_checkpoint, reference_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    to_torch(v1_checkpoint, tmp_path / "missing" / "paella.pt")
  with pytest.raises(ValueError, match="unknown output suffix '.npz'"):
    to_torch(v1_checkpoint, tmp_path / "paella.npz")
  with pytest.raises(ValueError, match="no diffusers format"):
    to_torch(v1_checkpoint, tmp_path / "paella_dir")
  with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
    to_torch(tmp_path / "nowhere", tmp_path / "x.pt")
  clip = save_model(tmp_path / "clip", {"w": np.zeros(2)}, "clip", {})
  with pytest.raises(ValueError, match="'clip' model, which has no PyTorch export"):
    to_torch(clip, tmp_path / "clip.pt")
  v1 = save_model(tmp_path / "v1", {"w": np.zeros(2)}, "paella_v1", dict(
      num_labels=8, c_hidden=8, c_clip=4, c_r=4, down_levels=[1], up_levels=[1]))
  with pytest.raises(ValueError, match=r"(?s)v1.*missing keys: clf/bias.*unexpected keys: w"):
    to_torch(v1, tmp_path / "v1.pt")
  gumbel = save_vqgan(tmp_path / "gumbel", *vqgan_from_torch(
      reference_dir / "rudalle_gumbel_vqgan_tiny.ckpt", resolution=32))
  with pytest.raises(ValueError, match="'gumbel' quantizer has no diffusers model"):
    to_torch(gumbel, tmp_path / "gumbel_diffusers")
  assert not any(".tmp." in p.name for p in tmp_path.iterdir())
