"""The FID Inception port against an independent PyTorch reference, and its converter.

torchvision does not import beside this environment's torch, so pytorch-fid's model (torchvision's
Inception3 + pytorch-fid's FIDInceptionA/C/E_1/E_2 patches) is rebuilt below from the published
architecture, with pytorch-fid's state_dict names. Weights are random; BatchNorm statistics are
chosen so activations stay O(1) through all 94 layers.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from paella_jax.convert.inception import inception_from_torch  # noqa: E402
from paella_jax.encoders.inception import load_inception, save_inception  # noqa: E402
from paella_jax.convert.torch_io import CheckpointMismatchError  # noqa: E402
from paella_jax.models.inception import InceptionV3, resize_bilinear  # noqa: E402


class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=None)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def avg_pool(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(avg_pool(x))], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([
        self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_pool(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (average pool, padding not counted) or FIDInceptionE_2 (max pool)."""

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's InceptionV3(output_blocks=[3]) with its FID patches, after its resize:
  (B, 3, H, W) in [0, 1] -> (B, 2048)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, 32)
    self.Mixed_5c = FIDInceptionA(256, 64)
    self.Mixed_5d = FIDInceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    self.Mixed_7c = FIDInceptionE(2048, max_pool=True)

  def forward(self, x):
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


@pytest.fixture(scope="module")
def reference():
  """(torch model in eval mode, its state_dict): He-normal convs and BatchNorm statistics near
  the identity, so activations stay O(1) through all 94 layers, as with the real weights."""
  torch.manual_seed(0)
  model = FIDInceptionV3()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval(), model.state_dict()


def test_pool_features_match_pytorch_reference(reference):
  model, state_dict = reference
  module, params = inception_from_torch(state_dict, resize_to=None)
  images = np.random.default_rng(1).uniform(size=(3, 83, 75, 3)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(jax.jit(module.apply)({"params": params}, images))
  assert got.shape == (3, 2048)
  assert want.std() > 0.05 and (want > 0).mean() > 0.2   # features neither vanish nor saturate
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_299_pipeline_matches_pytorch_reference(reference):
  """The whole pytorch-fid path: 256x256 images resized to 299, pool features."""
  model, state_dict = reference
  module, params = inception_from_torch(state_dict)
  images = np.random.default_rng(3).uniform(size=(2, 256, 256, 3)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    want = model(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)).numpy()
  got = np.asarray(jax.jit(module.apply)({"params": params}, images))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_resize_matches_pytorch_bilinear():
  images = np.random.default_rng(2).uniform(size=(2, 37, 50, 3)).astype(np.float32)
  for size in (299, 23):
    want = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(size, size),
                         mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(resize_bilinear(images, size)), want, atol=1e-6)


def test_state_dict_layout_and_extras(reference):
  _, state_dict = reference
  assert {"Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.bn.running_var"} <= set(state_dict)
  extras = dict(state_dict, **{"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
  _, params = inception_from_torch(extras)
  assert params["Mixed_7c"]["branch_pool"]["kernel"].shape == (1, 1, 2048, 192)
  folded = sum(v.numel() for k, v in state_dict.items() if k.endswith(("conv.weight", "bn.bias")))
  assert sum(np.size(x) for x in jax.tree.leaves(params)) == folded


def test_converter_names_missing_and_misshaped_keys(reference):
  _, state_dict = reference
  broken = dict(state_dict)
  del broken["Mixed_6b.branch7x7_2.bn.running_mean"]
  broken["Mixed_5b.branch_pool.conv.weight"] = torch.zeros(64, 192, 1, 1)
  broken["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
  with pytest.raises(CheckpointMismatchError) as e:
    inception_from_torch(broken)
  msg = str(e.value)
  assert "Mixed_6b.branch7x7_2.bn.running_mean" in msg and "AuxLogits.fc.weight" in msg
  assert "Mixed_5b.branch_pool.conv.weight" in msg


def test_checkpoint_roundtrip_and_errors(reference, tmp_path):
  _, state_dict = reference
  path = tmp_path / "pt_inception.pth"
  torch.save(state_dict, path)
  module, params = inception_from_torch(str(path))
  save_inception(tmp_path / "ckpt", module, params)
  loaded, loaded_params = load_inception(tmp_path / "ckpt")
  assert loaded.resize_to == 299
  np.testing.assert_array_equal(loaded_params["Conv2d_1a_3x3"]["kernel"],
                                params["Conv2d_1a_3x3"]["kernel"])
  with pytest.raises(FileNotFoundError):
    inception_from_torch(str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="at least 75"):
    InceptionV3(resize_to=None).init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
