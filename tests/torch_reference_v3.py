"""An independent PyTorch implementation of Paella v3's predictor, written from the design brief,
with the released checkpoint's key names. Tests check it against the original code's fixture
and then use it to check the Flax port on configurations the fixture does not cover."""

import math

import torch
from torch import nn
from torch.nn import functional as F


def ln(x):  # channels last, no affine
  return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class GRN(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.gamma = nn.Parameter(torch.randn(1, 1, 1, c))
    self.beta = nn.Parameter(torch.randn(1, 1, 1, c))

  def forward(self, x):  # NHWC
    g = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    return self.gamma * (x * (g / (g.mean(-1, keepdim=True) + 1e-6))) + self.beta + x


def mlp(c):
  return nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), GRN(4 * c), nn.Identity(),
                       nn.Linear(4 * c, c))


class C(nn.Module):
  def __init__(self, c, c_skip, k):
    super().__init__()
    self.depthwise = nn.Conv2d(c + c_skip, c, k, padding=k // 2, groups=c)
    self.channelwise = mlp(c)

  def forward(self, x, skip=None):  # NCHW
    h = x if skip is None else torch.cat([x, skip], 1)
    h = ln(self.depthwise(h).permute(0, 2, 3, 1))
    return x + self.channelwise(h).permute(0, 3, 1, 2)


class T(nn.Module):
  def __init__(self, c, c_r):
    super().__init__()
    self.mapper = nn.Linear(c_r, 2 * c)

  def forward(self, x, r_emb):
    a, b = self.mapper(r_emb).unflatten(1, (2, -1)).unbind(1)
    return x * (1 + a[:, :, None, None]) + b[:, :, None, None]


class Attn(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.attn = nn.MultiheadAttention(c, 1, batch_first=True)  # heads set by the owner


class A(nn.Module):
  def __init__(self, c, c_cond, nhead, self_attn):
    super().__init__()
    self.self_attn, self.nhead = self_attn, nhead
    self.attention = Attn(c)
    self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

  def forward(self, x, seq):
    b, c, h, w = x.shape
    q = ln(x.flatten(2).transpose(1, 2))
    kv = self.kv_mapper(seq)
    if self.self_attn:
      kv = torch.cat([q, kv], 1)
    wq, wk, wv = self.attention.attn.in_proj_weight.chunk(3)
    bq, bk, bv = self.attention.attn.in_proj_bias.chunk(3)
    heads = lambda t: t.unflatten(-1, (self.nhead, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(heads(F.linear(q, wq, bq)), heads(F.linear(kv, wk, bk)),
                                         heads(F.linear(kv, wv, bv)))
    out = self.attention.attn.out_proj(out.transpose(1, 2).flatten(2))
    return x + out.transpose(1, 2).reshape(b, c, h, w)


class Fb(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.channelwise = mlp(c)

  def forward(self, x):
    return x + self.channelwise(ln(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class ReferenceV3(nn.Module):
  def __init__(self, c_in, c_out, num_labels, c_r, patch_size, c_cond, c_hidden, nhead, blocks,
               level_config, clip_embd, byt5_embd, clip_seq_len, kernel_size, self_attn):
    super().__init__()
    self.c_r, self.c_cond, self.p = c_r, c_cond, patch_size
    self.byt5_mapper = nn.Linear(byt5_embd, c_cond)
    self.clip_mapper = nn.Linear(clip_embd, c_cond * clip_seq_len)
    self.clip_image_mapper = nn.Linear(clip_embd, c_cond * clip_seq_len)
    self.in_mapper = nn.Sequential(nn.Embedding(num_labels, c_in))
    self.embedding = nn.Sequential(nn.Identity(),
                                   nn.Conv2d(c_in * patch_size ** 2, c_hidden[0], 1))

    def make(letter, i, c_skip=0):
      c = c_hidden[i]
      return {"C": lambda: C(c, c_skip, kernel_size), "T": lambda: T(c, c_r),
              "A": lambda: A(c, c_cond, nhead[i], self_attn), "F": lambda: Fb(c)}[letter]()

    n = len(c_hidden)
    self.down_blocks = nn.ModuleList()
    for i in range(n):
      mods = [nn.Sequential(nn.Identity(), nn.Conv2d(c_hidden[i - 1], c_hidden[i], 2, 2))] if i else []
      mods += [make(l, i) for l in level_config[i] * blocks[i]]
      self.down_blocks.append(nn.ModuleList(mods))
    self.up_blocks = nn.ModuleList()
    for i in reversed(range(n)):
      letters = level_config[i] * blocks[i]
      mods = [make(l, i, c_hidden[i] if (i < n - 1 and j == 0) else 0)
              for j, l in enumerate(letters)]
      if i:
        mods.append(nn.Sequential(nn.Identity(),
                                  nn.ConvTranspose2d(c_hidden[i], c_hidden[i - 1], 2, 2)))
      self.up_blocks.append(nn.ModuleList(mods))
    self.clf = nn.Sequential(nn.Identity(), nn.Conv2d(c_hidden[0], c_out * patch_size ** 2, 1))
    self.out_mapper = nn.Sequential(nn.Identity(), nn.Conv2d(c_out, num_labels, 1, bias=False))

  def r_embedding(self, r):
    half = self.c_r // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(1e4) / (half - 1)))
    args = (r * 1e4)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], 1)
    return F.pad(emb, (0, self.c_r % 2))

  def sequence(self, byt5, clip, clip_image):
    parts = [] if byt5 is None else [self.byt5_mapper(byt5)]
    for mapper, v in ((self.clip_mapper, clip), (self.clip_image_mapper, clip_image)):
      if v is not None:
        parts.append(mapper(v).unflatten(1, (-1, self.c_cond)))
    return ln(torch.cat(parts, 1))

  @staticmethod
  def norm2d(x):
    return ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

  def run(self, block, x, r_emb, seq, skip=None):
    if isinstance(block, C):
      return block(x, skip)
    if isinstance(block, T):
      return block(x, r_emb)
    if isinstance(block, A):
      return block(x, seq)
    if isinstance(block, Fb):
      return block(x)
    return block[1](self.norm2d(x))  # a resampling conv after its LayerNorm

  def forward(self, x, r, byt5, clip=None, clip_image=None):
    r_emb, seq = self.r_embedding(r), self.sequence(byt5, clip, clip_image)
    h = ln(self.in_mapper(x)).permute(0, 3, 1, 2)
    h = self.norm2d(self.embedding[1](F.pixel_unshuffle(h, self.p)))
    outs = []
    for mods in self.down_blocks:
      for block in mods:
        h = self.run(block, h, r_emb, seq)
      outs.insert(0, h)
    h = outs[0]
    for u, mods in enumerate(self.up_blocks):
      for j, block in enumerate(mods):
        h = self.run(block, h, r_emb, seq, outs[u] if (u > 0 and j == 0) else None)
    h = F.pixel_shuffle(self.clf[1](self.norm2d(h)), self.p)
    return self.out_mapper[1](self.norm2d(h))


def reference_sample(model, cond, uncond, shape, steps, temperature, cfg, conditional_steps,
                     generator=None):
  """The original v3 sampling algorithm (src_distributed/utils.py::sample) in PyTorch, for any
  model with its call and `out_mapper` (this reference or the original `Paella`). -> (B, h, w)."""
  batch = shape[0]
  init = torch.randint(0, model.out_mapper[1].out_channels, shape, generator=generator)
  x = init.clone()
  ts = torch.linspace(1, 0, steps + 1)
  temps = torch.linspace(*temperature, steps)
  cfgs = torch.linspace(*cfg, steps)
  for i in range(steps):
    t = torch.full((batch,), float(ts[i]))
    logits = model(x, t, **cond)
    if i < conditional_steps:
      uncond_logits = model(x, t, **uncond)
      logits = uncond_logits + cfgs[i] * (logits - uncond_logits)
    probs = (logits / temps[i]).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    x = torch.multinomial(probs, 1, generator=generator)[:, 0].view(shape)
    if i < steps - 1:
      x = torch.where(torch.rand(shape, generator=generator) < ts[i + 1], init, x)
  return x.numpy()
