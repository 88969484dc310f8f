"""PyTorch VQGAN weights -> `paella_jax.models.vqgan` modules and parameters.

Sources:
- taming-transformers / ruDALL-E Lightning checkpoints (`{"state_dict": ...}`), e.g. Paella v1's
  `vqgan.gumbelf8-sber.model.ckpt` (Gumbel quantizer) or taming's ImageNet VQGANs
  (nearest-neighbour quantizer). Training-only entries (`loss.*`: discriminator, LPIPS) are dropped.
- diffusers model directories (config.json + diffusion_pytorch_model.safetensors/.bin) of
  `VQModel` (taming architecture, e.g. aMUSEd's VQGAN) or `PaellaVQModel` (Paella v3's f4 VQGAN,
  used by Wuerstchen).
- a flat state_dict already in memory, with either key layout.

The architecture is read from the tensor shapes (and from config.json for diffusers); the result
is checked key by key against the Flax module it builds, so a checkpoint of another architecture
fails with a CheckpointMismatchError naming the missing, unexpected and mis-shaped tensors.

    python -m paella_jax.convert vqgan vqgan.gumbelf8-sber.model.ckpt ckpts/vqgan_sber_f8
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paella_jax.convert.torch_io import (CheckpointMismatchError, check_state_dict,
                                         load_torch_file, to_numpy_state_dict)
from paella_jax.encoders.vq import save_vqgan
from paella_jax.models.vqgan import PaellaVQ, VQGAN, init_params

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_IGNORED = re.compile(r"^loss\.|\.num_batches_tracked$")


# ----------------------------------------------------------------------------------------------
# Flax parameter path <-> PyTorch key


def _torch_module_path(path: tuple[str, ...]) -> str:
  """('encoder', 'down_0_block_1', 'conv1') -> 'encoder.down.0.block.1.conv1' (taming names).

  Flax names put "_" before each index of the PyTorch path; the middle blocks of the taming
  Encoder/Decoder keep theirs (mid.block_1, mid.attn_1). Paella v3's encoder/decoder are flat in
  PyTorch, so their Flax scopes are dropped.
  """
  if path[0] in ("encoder", "decoder") and path[1].startswith(("in_block", "down_blocks",
                                                               "up_blocks", "out_block")):
    path = path[1:]
  return ".".join("mid." + p[4:] if p.startswith("mid_") else _dotted(p) for p in path)


def _dotted(name: str) -> str:
  """'down_0_block_1' -> 'down.0.block.1', 'up_blocks_0_0' -> 'up_blocks.0.0'."""
  out = ""
  for i, token in enumerate(name.split("_")):
    if i:
      out += "." if token.isdigit() or out.split(".")[-1].isdigit() else "_"
    out += token
  return out


_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var", "gammas": "gammas"}


def _leaf_kind(path: tuple[str, ...], ndim: int) -> str:
  """How a PyTorch tensor becomes this Flax leaf: 'conv', 'conv_transpose', 'dense' or 'copy'."""
  if path[-1] != "kernel":
    return "copy"
  if ndim == 2:
    return "dense"
  # In Paella v3's decoder, a kernel directly under up_blocks_k (k >= 1) is a ConvTranspose2d.
  if re.fullmatch(r"up_blocks_[1-9]\d*", path[-2]):
    return "conv_transpose"
  return "conv"


# Flax leaf axes, in the order of the PyTorch tensor's axes.
TORCH_AXES = {"conv": (3, 2, 0, 1), "conv_transpose": (2, 3, 0, 1), "dense": (1, 0)}


def torch_layout(params_shape: Any) -> dict[str, tuple[tuple[str, ...], str, tuple]]:
  """torch key -> (flax path, leaf kind, torch shape) for every leaf of a Flax parameter tree."""
  layout = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params_shape)[0]:
    path = tuple(k.key for k in key_path)
    kind = _leaf_kind(path, len(leaf.shape))
    axes = TORCH_AXES.get(kind, tuple(range(len(leaf.shape))))
    torch_key = f"{_torch_module_path(path[:-1])}.{_LEAF_NAMES[path[-1]]}"
    layout[torch_key] = (path, kind, tuple(leaf.shape[a] for a in axes))
  return layout


def _params_from_state_dict(module, state_dict: Mapping[str, np.ndarray], what: str) -> dict:
  """Checks `state_dict` against `module`'s parameters and returns them as a Flax tree."""
  shapes = jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0), module.factor))
  layout = torch_layout(shapes)
  check_state_dict(state_dict, {k: v[2] for k, v in layout.items()}, what)
  params: dict = {}
  for key, (path, kind, _) in layout.items():
    value = np.asarray(state_dict[key], np.float32)
    if kind in TORCH_AXES:
      value = value.transpose(np.argsort(TORCH_AXES[kind]))
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(value)
  return params


# ----------------------------------------------------------------------------------------------
# taming / ruDALL-E state dicts


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
  """The number of distinct integers matched by the (\\d+) group of `pattern` in the keys."""
  rx = re.compile(pattern)
  return len({m.group(1) for k in state_dict if (m := rx.match(k))})


def _taming_module(state_dict: Mapping[str, np.ndarray], resolution: int, **overrides) -> VQGAN:
  """Reads a taming VQGAN's architecture from the tensor shapes of its state_dict."""
  if "quantize.used" in state_dict:
    raise CheckpointMismatchError("VQGANs with a remapped codebook (quantize.used) are not "
                                  "supported; their codes index a subset of the codebook")
  if "quantize.proj.weight" in state_dict:
    quantizer, embed = "gumbel", state_dict["quantize.embed.weight"]
  elif "quantize.embedding.weight" in state_dict:
    quantizer, embed = "vq", state_dict["quantize.embedding.weight"]
  else:
    raise CheckpointMismatchError("not a VQGAN state_dict: no quantizer (quantize.proj.weight "
                                  "for Gumbel, quantize.embedding.weight for nearest-neighbour)")
  conv_in = state_dict["encoder.conv_in.weight"]
  ch = conv_in.shape[0]
  levels = _count(state_dict, r"encoder\.down\.(\d+)\.")
  ch_mult = tuple(int(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch
                  for i in range(levels))
  attn_levels = [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state_dict]
  arch = dict(
      ch=int(ch), ch_mult=ch_mult, in_channels=int(conv_in.shape[1]),
      num_res_blocks=_count(state_dict, r"encoder\.down\.0\.block\.(\d+)\."),
      attn_resolutions=tuple(resolution // 2 ** i for i in attn_levels), resolution=resolution,
      z_channels=int(state_dict["encoder.conv_out.weight"].shape[0]),
      embed_dim=int(embed.shape[1]), n_embed=int(embed.shape[0]), quantizer=quantizer,
      out_channels=int(state_dict["decoder.conv_out.weight"].shape[0]),
      mid_attention="encoder.mid.attn_1.q.weight" in state_dict)
  arch.update(overrides)
  return VQGAN(**arch)


# ----------------------------------------------------------------------------------------------
# diffusers VQModel <-> taming key names: one table, read in both directions

# Module paths (diffusers, taming, how taming numbers the "#" index): "same", "from1" (the middle
# blocks count from 1) or "reversed" (taming counts the decoder's up levels from the top).
_DIFFUSERS_MODULES = [
    *[(f"{part}.{d}", f"{part}.{t}", index) for part in ("encoder", "decoder")
      for d, t, index in (("conv_norm_out", "norm_out", None),
                          ("mid_block.resnets.#", "mid.block_#", "from1"),
                          ("mid_block.attentions.0", "mid.attn_1", None))],
    ("encoder.down_blocks.#.resnets", "encoder.down.#.block", "same"),
    ("encoder.down_blocks.#.attentions", "encoder.down.#.attn", "same"),
    ("encoder.down_blocks.#.downsamplers.0", "encoder.down.#.downsample", "same"),
    ("decoder.up_blocks.#.resnets", "decoder.up.#.block", "reversed"),
    ("decoder.up_blocks.#.attentions", "decoder.up.#.attn", "reversed"),
    ("decoder.up_blocks.#.upsamplers.0", "decoder.up.#.upsample", "reversed"),
]
# index -> index, given the number of levels: (diffusers -> taming, taming -> diffusers)
_INDEX_MAPS = {"same": (lambda i, n: i, lambda i, n: i),
               "from1": (lambda i, n: i + 1, lambda i, n: i - 1),
               "reversed": (lambda i, n: n - 1 - i, lambda i, n: n - 1 - i)}
# Layers inside a block: diffusers name -> taming name.
_DIFFUSERS_LAYERS = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q",
                     "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# Attention layer names of older diffusers checkpoints, read as today's.
_DIFFUSERS_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Attention projections are 1x1 convolutions in taming, Linear layers in diffusers.
ATTENTION_PROJECTION = re.compile(r"\.(attn\.\d+|attn_1)\.(q|k|v|proj_out)\.weight$")


def _prefix_pattern(path: str) -> re.Pattern:
  return re.compile("^" + r"(\d+)".join(map(re.escape, path.split("#"))) + r"\.")


def _rename(key: str, levels: int, to_taming: bool) -> str:
  """A VQModel key in the other library's naming, through `_DIFFUSERS_MODULES`/`_LAYERS`."""
  src, dst = (0, 1) if to_taming else (1, 0)
  for rule in _DIFFUSERS_MODULES:
    m = _prefix_pattern(rule[src]).match(key)
    if m:
      path = rule[dst]
      if rule[2]:
        path = path.replace("#", str(_INDEX_MAPS[rule[2]][src](int(m[1]), levels)))
      key = f"{path}.{key[m.end():]}"
      break
  layers = _DIFFUSERS_LAYERS if to_taming else {t: d for d, t in _DIFFUSERS_LAYERS.items()}
  if to_taming:
    layers = {**{old: layers[new] for old, new in _DIFFUSERS_LEGACY.items()}, **layers}
  m = re.match(r"^(.*\.)?(" + "|".join(map(re.escape, layers)) + r")\.(weight|bias)$", key)
  return f"{m[1] or ''}{layers[m[2]]}.{m[3]}" if m else key


def taming_key(key: str, levels: int) -> str:
  """A diffusers VQModel key in taming's naming."""
  return _rename(key, levels, to_taming=True)


def diffusers_key(key: str, levels: int) -> str:
  """A taming VQGAN key in diffusers VQModel's naming (the inverse of `taming_key`)."""
  return _rename(key, levels, to_taming=False)


def _diffusers_block_types(state_dict: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
  """The block types of a diffusers VQModel state_dict given without its config.json."""
  def types(prefix, plain):
    n = _count(state_dict, rf"{prefix}\.(\d+)\.")
    return [("Attn" if any(k.startswith(f"{prefix}.{i}.attentions.") for k in state_dict)
             else "") + plain for i in range(n)]
  return {"down_block_types": types("encoder.down_blocks", "DownEncoderBlock2D"),
          "up_block_types": types("decoder.up_blocks", "UpDecoderBlock2D")}


def _from_diffusers_vqmodel(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]
                            ) -> tuple[VQGAN, dict[str, np.ndarray]]:
  """Renames a diffusers VQModel state_dict to taming's and builds the matching VQGAN."""
  down, up = list(config.get("down_block_types", [])), list(config.get("up_block_types", []))
  allowed_down = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}
  allowed_up = {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}
  if not set(down) <= allowed_down or not set(up) <= allowed_up:
    raise ValueError(f"unsupported diffusers VQModel blocks {down} / {up}; supported: "
                     f"{sorted(allowed_down)} / {sorted(allowed_up)}")
  if config.get("norm_type", "group") != "group":
    raise ValueError(f"diffusers VQModel with norm_type={config['norm_type']!r} (MoVQ's "
                     "spatially conditioned norm) is not supported; only 'group'")
  enc_attn = [t.startswith("Attn") for t in down]
  dec_attn = [t.startswith("Attn") for t in reversed(up)]
  if enc_attn != dec_attn:
    raise ValueError(f"encoder and decoder attention levels differ ({down} vs {up}); only "
                     "symmetric VQModels (as in taming) are supported")
  levels = len(down)
  renamed = {}
  for key, value in state_dict.items():
    new = taming_key(key, levels)
    if ATTENTION_PROJECTION.search(new) and value.ndim == 2:
      value = value[:, :, None, None]  # diffusers' attention projections are Linear layers
    renamed[new] = value
  resolution = max(int(config.get("sample_size", 0)), 2 ** levels)  # nominal: names the levels
  module = _taming_module(
      renamed, resolution, norm_groups=int(config.get("norm_num_groups", 32)),
      act=config.get("act_fn", "silu"),
      attn_resolutions=tuple(resolution // 2 ** i for i, a in enumerate(enc_attn) if a))
  return module, renamed


# ----------------------------------------------------------------------------------------------
# Paella v3 (diffusers PaellaVQModel)


# PaellaVQ fields named otherwise in PaellaVQModel's config.json.
PAELLA_CONFIG_NAMES = {"n_embed": "num_vq_embeddings"}
# Paella v3's own VQModel (`vqgan_f4.pt`, with torchtools' VectorQuantize) names the codebook
# otherwise than diffusers' PaellaVQModel: diffusers key -> original key.
PAELLA_ORIGINAL_KEYS = {"vquantizer.embedding.weight": "vquantizer.codebook.weight"}


def _paella_module(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> PaellaVQ:
  """PaellaVQ from a PaellaVQModel config (or, without one, from the tensor shapes)."""
  n_mixing = _count(state_dict, r"down_blocks\.(\d+)\.gammas$")
  n_down = _count(state_dict, r"down_blocks\.(\d+)\.")
  embed = state_dict["vquantizer.embedding.weight"]
  in_channels = int(config.get("in_channels", 3))
  scale = int(config.get("up_down_scale_factor",
                         round((state_dict["in_block.1.weight"].shape[1] / in_channels) ** 0.5)))
  arch = dict(
      in_channels=in_channels, up_down_scale_factor=scale, levels=n_mixing,
      out_channels=int(state_dict["out_block.0.weight"].shape[0]) // scale ** 2,
      bottleneck_blocks=_count(state_dict, r"up_blocks\.(\d+)\.gammas$") - (n_mixing - 1),
      embed_dim=int(state_dict[f"down_blocks.{n_down - 1}.0.weight"].shape[1]),
      latent_channels=int(embed.shape[1]), n_embed=int(embed.shape[0]))
  for name in arch:  # the config, where present, must agree with the tensors
    key = PAELLA_CONFIG_NAMES.get(name, name)
    if key in config and config[key] != arch[name]:
      raise CheckpointMismatchError(f"config.json says {key}={config[key]} but the weights "
                                    f"have {arch[name]}")
  return PaellaVQ(**arch)


# ----------------------------------------------------------------------------------------------
# Entry point


def _read_source(source) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
  """(flat numpy state_dict, diffusers config or {}, description) from a path or a mapping."""
  if isinstance(source, Mapping):
    state_dict, config, what = dict(source), {}, "state_dict"
  elif os.path.isdir(source):
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
      raise ValueError(f"{source} is not a diffusers model directory (no config.json)")
    with open(config_path) as f:
      config = json.load(f)
    weights = [os.path.join(source, n) for n in DIFFUSERS_WEIGHTS
               if os.path.isfile(os.path.join(source, n))]
    if not weights:
      raise FileNotFoundError(f"{source} has no {' or '.join(DIFFUSERS_WEIGHTS)}")
    state_dict, what = load_torch_file(weights[0]), weights[0]
  else:
    state_dict, config, what = load_torch_file(source), {}, os.fspath(source)
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]  # a Lightning checkpoint
  state_dict = to_numpy_state_dict({k: v for k, v in state_dict.items() if not _IGNORED.search(k)})
  return state_dict, config, what


def vqgan_from_torch(source, resolution: int = 256, norm_groups: int = 32,
                     dtype: Any = jnp.float32) -> tuple[Any, dict]:
  """Converts PyTorch VQGAN weights: returns (module, params) for `paella_jax.models.vqgan`.

  Args:
    source: a taming/ruDALL-E `.ckpt`/`.pt` file, a `.safetensors` file, a diffusers
      `VQModel`/`PaellaVQModel` directory, or a flat state_dict (torch tensors or numpy arrays).
    resolution: the nominal training resolution of a taming checkpoint; it only names the levels
      that hold attention (`attn_resolutions`), found from the weights. Any image size that is a
      multiple of the downsampling factor works at run time.
    norm_groups: GroupNorm groups of a taming checkpoint (always 32 in taming; diffusers
      directories give theirs in config.json).
    dtype: the module's compute dtype (parameters stay float32).

  Raises CheckpointMismatchError when the weights are not a supported VQGAN.
  """
  state_dict, config, what = _read_source(source)
  if not config and set(PAELLA_ORIGINAL_KEYS.values()) & set(state_dict):  # Paella's vqgan_f4.pt
    diffusers_names = {original: d for d, original in PAELLA_ORIGINAL_KEYS.items()}
    state_dict = {diffusers_names.get(k, k): v for k, v in state_dict.items()}
  class_name = config.get("_class_name")
  if class_name == "PaellaVQModel" or (not config and "vquantizer.embedding.weight" in state_dict):
    module = _paella_module(state_dict, config)
  elif class_name == "VQModel" or (not config and "encoder.conv_in.weight" in state_dict
                                   and "encoder.down_blocks.0.resnets.0.conv1.weight" in state_dict):
    module, state_dict = _from_diffusers_vqmodel(state_dict,
                                                 config or _diffusers_block_types(state_dict))
  elif class_name is None and "encoder.conv_in.weight" in state_dict:
    module = _taming_module(state_dict, resolution, norm_groups=norm_groups)
  else:
    shown = ", ".join(sorted(state_dict)[:6])
    raise CheckpointMismatchError(
        f"{what} is not a supported VQGAN (taming/ruDALL-E, diffusers VQModel or PaellaVQModel)"
        + (f": config.json names {class_name}" if class_name else f"; its keys begin {shown}"))
  params = _params_from_state_dict(module, state_dict, f"{type(module).__name__} ({what})")
  return module.clone(dtype=dtype), params


# ----------------------------------------------------------------------------------------------
# Command line


def write_checkpoint(*, checkpoint: str, out_dir: str, resolution: int = 256, norm_groups: int = 32,
                     overwrite: bool = False) -> str:
  """Converts and writes the checkpoint (the paella-convert subcommand's arguments as
  keywords); returns a one-line summary."""
  module, params = vqgan_from_torch(checkpoint, resolution=resolution,
                                    norm_groups=norm_groups)
  out = save_vqgan(out_dir, module, params, overwrite=overwrite,
                   meta={"source": os.path.basename(os.path.normpath(checkpoint))})
  n = sum(np.size(x) for x in jax.tree.leaves(params))
  return (f"wrote {type(module).__name__} ({n:,} parameters, f={module.factor}, "
          f"{module.n_embed} codes) to {out}")
