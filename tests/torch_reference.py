"""An independent PyTorch implementation of Paella v1's DenoiseUNet, written from the design
brief, with the released checkpoint's key names. Tests check it against the original code's
fixture and then use it to check the Flax port on configurations the fixture does not cover."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class MLN(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.ln = nn.LayerNorm(c, eps=1e-6)
    self.gamma = nn.Parameter(torch.randn(1, 1, 1))
    self.beta = nn.Parameter(torch.randn(1, 1, 1))

  def forward(self, x, s):  # channels last
    return self.gamma * s * self.ln(x) + self.beta * s


class Block(nn.Module):
  def __init__(self, c, c_cond, c_skip=0):
    super().__init__()
    self.depthwise = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, groups=c))
    self.ln = MLN(c)
    self.channelwise = nn.Sequential(nn.Linear(c + c_skip, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
    self.gamma = nn.Parameter(torch.randn(c))
    self.cond_mapper = nn.Linear(c_cond, c)

  def forward(self, x, s, skip=None):  # x NCHW, s NCHW
    h = self.depthwise(x)
    if s.shape[-2:] == (1, 1):
      s = s.expand(-1, -1, *h.shape[-2:])
    elif s.shape[-2:] != h.shape[-2:]:
      s = F.interpolate(s, size=h.shape[-2:], mode="bilinear", align_corners=False)
    s = self.cond_mapper(s.permute(0, 2, 3, 1))
    h = self.ln(h.permute(0, 2, 3, 1), s)
    if skip is not None:
      h = torch.cat([h, skip.permute(0, 2, 3, 1)], -1)
    return x + (self.gamma * self.channelwise(h)).permute(0, 3, 1, 2)


class ReferenceUNet(nn.Module):
  def __init__(self, num_labels, c_hidden, c_clip, c_r, down_levels, up_levels):
    super().__init__()
    self.c_r = c_r
    n = len(down_levels)
    c = [c_hidden // 2 ** i for i in reversed(range(n))]
    self.embedding = nn.Embedding(num_labels, c[0])
    self.down_blocks = nn.ModuleList()
    for i, k in enumerate(down_levels):
      mods = [nn.Conv2d(c[i - 1], c[i], 4, 2, 1)] if i > 0 else []
      mods += [Block(c[i], c_clip + c_r) for _ in range(k)]
      self.down_blocks.append(nn.ModuleList(mods))
    self.up_blocks = nn.ModuleList()
    for i, k in enumerate(up_levels):
      w = c[n - 1 - i]
      mods = [Block(w, c_clip + c_r, w if (j == 0 and i > 0) else 0) for j in range(k)]
      if i < n - 1:
        mods.append(nn.ConvTranspose2d(w, c[n - 2 - i], 4, 2, 1))
      self.up_blocks.append(nn.ModuleList(mods))
    self.clf = nn.Conv2d(c[0], num_labels, 1)

  def r_embedding(self, r):
    level = torch.cos(r * torch.pi / 2) * 10000
    half = self.c_r // 2
    freqs = torch.arange(half).float().mul(-math.log(10000) / (half - 1)).exp()
    args = level[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], 1)
    return F.pad(emb, (0, 1)) if self.c_r % 2 else emb

  def forward(self, x, c, r):
    r_emb = self.r_embedding(r)
    x = self.embedding(x).permute(0, 3, 1, 2)
    if c.dim() == 2:
      s = torch.cat([c, r_emb], 1)[:, :, None, None]
    else:
      s = torch.cat([c, r_emb[:, :, None, None].expand(-1, -1, *c.shape[-2:])], 1)
    outs = []
    for blocks in self.down_blocks:
      for b in blocks:
        x = b(x, s) if isinstance(b, Block) else b(x)
      outs.insert(0, x)
    x = outs[0]
    for i, blocks in enumerate(self.up_blocks):
      for j, b in enumerate(blocks):
        if isinstance(b, Block):
          x = b(x, s, outs[i] if (i > 0 and j == 0) else None)
        else:
          x = b(x)
    return self.clf(x)
