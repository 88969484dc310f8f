"""The inference pipeline: a token predictor with its text encoders and VQ codec, one method per mode.

    pipe = Pipeline.from_checkpoint("ckpts/paella_v1")          # CLIP and VQGAN as model.json records
    result = pipe.generate("a red fox in the snow", num_images=4, seed=0)
    result.images        # (4, 256, 256, 3) float32 in [0, 1]; result.codes (4, 32, 32) int32
    pipe.inpaint(image, "a red hat", box=(0, 64, 128, 192))
    pipe.outpaint(image, canvas=(256, 512), prompts="a wide beach")
    pipe.edit(image, "a watercolour painting")                  # structural editing
    pipe.vary(image, num_images=4)                              # CLIP image embedding
    pipe.interpolate(["a cat", "a dog"], frames=8)
    pipe.multi(["a forest", "a city"], layout="columns")       # Paella v1 only

Both model families sample through the same methods (`kind` from model.json):
- Paella v1 ("paella_v1") conditions on CLIP text embeddings (N, c_clip) and guides against
  zero conditioning.
- Paella v3 ("paella_v3") conditions on a dict: the prompt's ByT5 states `byt5` (N, L, D) with
  `byt5_mask` (N, L) and its CLIP text embedding `clip` (N, C), plus `clip_image` (N, C) for
  variations. Guidance's other half (`uncond`) is the conditioning of the empty prompt, as in
  the original sampler, or of `negative_prompt=`. It has no spatial conditioning, so no `multi`.

Every method takes images as (H, W, 3) arrays (uint8, or float in [0, 1]) or PIL images, and
returns a `Result`. Sampler settings come from the checkpoint's model.json for that mode, with any
keyword given to the method on top (`steps`, `cfg`, `typical_mass`, `typical_min_tokens`,
`temperature`, `renoise_mode`, `start_step`; "off" turns cfg or typical filtering off), and
`negative_prompt` (v3). The same seed and settings give the same codes. sample.py, the
server, the evaluation and the demo all sample through this class.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from paella_jax import checkpoint, editing
from paella_jax.sampler_settings import SamplerSettings, family_defaults
from paella_jax.sampling import sample

# Conditioning rows: an array (v1: (N, C) or (N, h', w', C)) or a dict of arrays with N rows each
# (v3: byt5 (N, L, D), byt5_mask (N, L) bool, clip (N, C), clip_image (N, C)).
Conditioning = Any


@dataclasses.dataclass
class Result:
  """codes (N, h, w) int32; images (N, H, W, 3) float32 in [0, 1] (None without a VQGAN);
  labels: N strings naming what each sample was conditioned on; settings: what was used."""
  codes: np.ndarray
  images: np.ndarray | None
  labels: list[str]
  settings: SamplerSettings


@dataclasses.dataclass
class Prepared:
  """One call of a mode, up to the sampler (`Pipeline.prepare`): the conditioning `cond` (N rows;
  see `Conditioning`), N labels, the seed (row i draws from `row_keys(seed, N)[i]`), the settings,
  the sampler inputs (`latent_shape`, or `init_tokens` (N, h, w) with an optional `mask`), and
  v3's `uncond` (N rows of guidance's other half; None for v1, which guides against zeros)."""
  cond: Conditioning
  labels: list[str]
  seed: int
  settings: SamplerSettings
  inputs: dict[str, Any]
  uncond: Conditioning | None = None

  @property
  def rows(self) -> int:
    return num_rows(self.cond)


# --------------------------------------------------------------------------- conditioning rows

def map_rows(fn: Callable[[np.ndarray], np.ndarray], cond: Conditioning) -> Conditioning:
  """`fn` applied to a conditioning array, or to each array of a conditioning dict."""
  return {k: fn(v) for k, v in cond.items()} if isinstance(cond, Mapping) else fn(cond)


def num_rows(cond: Conditioning) -> int:
  return len(next(iter(cond.values())) if isinstance(cond, Mapping) else cond)


def repeat_rows(cond: Conditioning, count: int) -> Conditioning:
  """Each row `count` times, in place (row 0 x count, then row 1 ...)."""
  return map_rows(lambda a: np.repeat(a, count, 0), cond)


def concat_rows(conds: Sequence[Conditioning]) -> Conditioning:
  """The rows of several conditionings of one `row_signature`, one after the other."""
  if isinstance(conds[0], Mapping):
    return {k: np.concatenate([c[k] for c in conds]) for k in conds[0]}
  return np.concatenate(conds)


def row_signature(cond: Conditioning | None) -> tuple:
  """What conditionings must share to be concatenated: their entries and per-row shapes."""
  if cond is None:
    return ()
  if isinstance(cond, Mapping):
    return tuple(sorted((k, np.shape(v)[1:]) for k, v in cond.items()))
  return (np.shape(cond)[1:],)


def _as_rows(cond: Conditioning) -> Conditioning:
  """Host arrays of the sampler's dtypes: float32, a byt5_mask bool."""
  if isinstance(cond, Mapping):
    return {k: np.asarray(v, bool if k == "byt5_mask" else np.float32)
            for k, v in cond.items() if v is not None}
  return np.asarray(cond, np.float32)


def row_keys(seed: int, count: int) -> jax.Array:
  """The PRNG keys of a seed's images 0 .. count - 1: fold_in(key(seed), i), (count,).

  Each image's codes depend only on its own key, so the same seed and settings give the same
  images whatever else is sampled in the same batch.
  """
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed),
                                                  np.arange(count, dtype=np.uint32))


def _prompt_list(prompts: str | Sequence[str], least: int = 1) -> list[str]:
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if len(prompts) < least:
    raise ValueError(f"give at least {least} prompt{'s' if least > 1 else ''}")
  return prompts


def _count(num_images: int) -> int:
  if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
    raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
  return int(num_images)


def as_image(image) -> np.ndarray:
  """A PIL image or an (H, W, 3) array (uint8, or float in [0, 1]) -> (H, W, 3) float32 in [0, 1]."""
  if hasattr(image, "mode") and hasattr(image, "size"):  # PIL
    from paella_jax.images import pil_to_rgb
    image = pil_to_rgb(image)
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"an image must be (height, width, 3) RGB, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  image = image.astype(np.float32)
  if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
    raise ValueError("a float image must hold values in [0, 1]")
  return image


# --------------------------------------------------------------------------- model families

class _PaellaV1:
  """v1: CLIP text embeddings (N, c_clip), pooled or spatial; the sampler guides against zeros."""
  latent_shape = (32, 32)
  spatial = True

  def __init__(self, pipe: Pipeline):
    self.pipe = pipe

  @staticmethod
  def build(config):
    from paella_jax.models.paella import build_model
    return build_model(config)

  @property
  def clip_width(self) -> int:
    return self.pipe.model.c_clip

  def encode(self, prompts: list[str]) -> np.ndarray:
    return self.pipe.text_encoder().encode_text(prompts)

  def unconditional(self, n: int) -> np.ndarray:
    return np.zeros((n, self.clip_width), np.float32)

  def uncond(self, n: int, negative_prompt: str | None) -> None:
    if negative_prompt is not None:
      raise ValueError("a negative prompt needs a Paella v3 model: Paella v1 guides with zero "
                       "conditioning, not with a prompt")
    return None

  @staticmethod
  def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    from paella_jax.models.clip import preprocess_images
    return np.asarray(preprocess_images(images, size))

  def image_conditioning(self, emb: np.ndarray) -> np.ndarray:
    return emb

  def noise_for_edit(self, rng, codes: np.ndarray, start_step: int, steps: int) -> np.ndarray:
    """Codes noised to step `start_step`'s level: replaced with probability cos(pi r / 2),
    r = start_step / steps."""
    return np.asarray(editing.noise_for_edit(rng, codes, start_step, steps,
                                             self.pipe.model.num_labels))

  def interpolation(self, prompts: list[str], frames: int, mode: str) -> np.ndarray:
    return editing.interpolation_path(self.encode(prompts), frames, mode)


class _PaellaV3:
  """v3: dict(byt5, byt5_mask, clip) of a prompt (ByT5 states, CLIP text embedding), with
  `clip_image` for variations; guidance's other half is the empty prompt's (or a negative one's)."""
  latent_shape = (64, 64)
  spatial = False

  def __init__(self, pipe: Pipeline):
    self.pipe, self._empty = pipe, None

  @staticmethod
  def build(config):
    from paella_jax.models.paella_v3 import build_model
    return build_model(config)

  @property
  def clip_width(self) -> int:
    return self.pipe.model.clip_embd

  def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
    hidden, mask = self.pipe.byt5_encoder().encode(prompts)
    return dict(byt5=hidden, byt5_mask=mask, clip=self.pipe.text_encoder().encode_text(prompts))

  def empty(self) -> dict[str, np.ndarray]:
    """The conditioning of "" (one row), encoded once."""
    if self._empty is None:
      self._empty = self.encode([""])
    return self._empty

  def unconditional(self, n: int) -> dict[str, np.ndarray]:
    return repeat_rows(self.empty(), n)

  def uncond(self, n: int, negative_prompt: str | None) -> dict[str, np.ndarray]:
    negative = self.empty() if negative_prompt is None else self.encode([negative_prompt])
    return repeat_rows(negative, n)

  @staticmethod
  def preprocess(images: np.ndarray, size: int) -> np.ndarray:
    from paella_jax.encoders.clip import preprocess_v3
    return np.asarray(preprocess_v3(images, size))

  def image_conditioning(self, emb: np.ndarray) -> dict[str, np.ndarray]:
    """The empty prompt's conditioning with the image embedding: guidance then pulls towards
    the image alone."""
    return dict(self.empty(), clip_image=emb)

  def noise_for_edit(self, rng, codes: np.ndarray, start_step: int, steps: int) -> np.ndarray:
    """Codes noised to step `start_step`'s level: replaced with probability t = 1 - start_step
    / steps (v3's linear schedule)."""
    from paella_jax.noise import replace_tokens
    level = np.full((len(codes),), 1.0 - start_step / steps, np.float32)
    return np.asarray(replace_tokens(rng, np.asarray(codes, np.int32), level,
                                     self.pipe.model.num_labels)[0])

  def interpolation(self, prompts: list[str], frames: int, mode: str) -> dict[str, np.ndarray]:
    """Frames along the path through the prompts' conditionings: the ByT5 states (padded to the
    longest prompt with zeros; a frame's mask keeps the tokens of the prompts it mixes) and the
    CLIP embeddings. The first and last frames are the first and last prompts."""
    cond = self.encode(prompts)
    mask = cond["byt5_mask"]
    byt5 = np.where(mask[..., None], cond["byt5"], 0.0).astype(np.float32)
    path = editing.interpolation_path(byt5.reshape(len(prompts), -1), frames, mode)
    return dict(byt5=path.reshape(frames, *byt5.shape[1:]),
                byt5_mask=editing.interpolation_path(mask.astype(np.float32), frames) > 0,
                clip=editing.interpolation_path(cond["clip"], frames, mode))


FAMILIES = {"paella_v1": _PaellaV1, "paella_v3": _PaellaV3}
MODEL_KINDS = tuple(FAMILIES)


class Pipeline:
  """A token predictor, its sampling defaults, its text encoders and its VQ codec.

  The encoders are given as objects (`text_encoder`: a `ClipEncoder`; `byt5_encoder`: a
  `ByT5Encoder`, v3 only; `codec`: a `VQGANCodec`) or as checkpoint directories loaded on first
  use (`clip_dir`, `byt5_dir`, `vqgan_dir`); a pipeline without a VQGAN samples codes only, one
  without text encoders takes embeddings only.
  """

  def __init__(self, model, params, *, kind: str = "paella_v1",
               sampling: Mapping[str, Any] | None = None,
               latent_shape: Sequence[int] | None = None, text_encoder=None, codec=None,
               byt5_encoder=None, clip_dir: str | None = None, vqgan_dir: str | None = None,
               byt5_dir: str | None = None, model_id: str | None = None, batch_size: int = 64):
    if kind not in FAMILIES:
      raise ValueError(f"a {kind!r} model cannot be sampled; models that can: {MODEL_KINDS}")
    self.model, self.params, self.kind = model, params, kind
    self.family = FAMILIES[kind](self)
    self.sampling = dict(sampling or family_defaults(kind))
    self.latent_shape = tuple(latent_shape or self.family.latent_shape)
    self.clip_dir, self.vqgan_dir, self.byt5_dir = clip_dir, vqgan_dir, byt5_dir
    self.model_id, self.batch_size = model_id, batch_size
    self._text, self._codec, self._byt5 = text_encoder, codec, byt5_encoder

  @classmethod
  def from_checkpoint(cls, directory: str, clip: str | None = None, vqgan: str | None = None,
                      byt5: str | None = None, batch_size: int = 64) -> Pipeline:
    """Loads a model directory (train.py's export or a converter's output) with the CLIP,
    VQGAN and (v3) ByT5 its model.json records (relative to it), or the ones given."""
    description = checkpoint.read_model_description(directory)
    kind = description["kind"]
    if kind not in FAMILIES:
      raise ValueError(f"{directory} holds a {kind!r} model, expected one of {MODEL_KINDS}")
    _, config, params = checkpoint.load_model(directory, expected_kind=kind)
    meta = description.get("meta", {})
    recorded = lambda given, key: given or checkpoint.recorded_path(directory, meta, key)
    return cls(FAMILIES[kind].build(config), jax.device_put(params), kind=kind,
               sampling=meta.get("sampling") or family_defaults(kind),
               latent_shape=meta.get("latent_shape"),
               clip_dir=recorded(clip, "clip_checkpoint"),
               vqgan_dir=recorded(vqgan, "vqgan_checkpoint"),
               byt5_dir=recorded(byt5, "byt5_checkpoint") if kind == "paella_v3" else None,
               model_id=checkpoint.checkpoint_id(description), batch_size=batch_size)

  # --------------------------------------------------------------------------- components

  def text_encoder(self, vision: bool = False):
    """The CLIP encoder (with its vision tower when `vision`), loaded on first use."""
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    has_vision = self._text is not None and self._text.model.config.vision is not None
    if self._text is None or (vision and not has_vision):
      if not self.clip_dir:
        raise ValueError("this needs a CLIP text encoder: the model records none; pass one "
                         "(--clip CKPT_DIR)")
      self._text = ClipEncoder(*load_clip(self.clip_dir, text_only=not vision),
                               batch_size=self.batch_size)
    return self._text

  def byt5_encoder(self):
    """The ByT5 encoder of a v3 model, loaded on first use. It encodes up to 8 prompts per
    device at once, each attending to its own tokens only (see `ByT5Encoder`)."""
    from paella_jax.encoders.byt5 import ByT5Encoder, load_t5_encoder
    if self._byt5 is None:
      if not self.byt5_dir:
        raise ValueError("this needs a ByT5 text encoder: the model records none; pass one "
                         "(--byt5 CKPT_DIR)")
      model, params, tokenizer = load_t5_encoder(self.byt5_dir)
      if tokenizer is None:
        raise ValueError(f"{self.byt5_dir} is a T5 without the byte tokenizer; Paella v3 "
                         "takes ByT5 states (convert google/byt5-xl)")
      self._byt5 = ByT5Encoder(model, params, tokenizer, batch_size=8 * jax.local_device_count())
    return self._byt5

  @property
  def codec(self):
    """The VQ codec, loaded on first use."""
    from paella_jax.encoders.vq import VQGANCodec, load_vqgan
    if self._codec is None:
      if not self.vqgan_dir:
        raise ValueError("this needs a VQGAN: the model records none; pass one (--vqgan CKPT_DIR)")
      self._codec = VQGANCodec(*load_vqgan(self.vqgan_dir), batch_size=self.batch_size)
    return self._codec

  @property
  def has_codec(self) -> bool:
    return self._codec is not None or bool(self.vqgan_dir)

  def settings(self, mode: str = "generate", **overrides) -> SamplerSettings:
    """The checkpoint's settings for `mode`, with `overrides` on top (see module docstring)."""
    return SamplerSettings.from_record(self.sampling, mode).with_overrides(**overrides)

  # --------------------------------------------------------------------------- building blocks

  def encode_text(self, prompts: str | Sequence[str]) -> Conditioning:
    """Prompts -> the model's conditioning: v1 (N, c_clip) float32; v3 dict(byt5 (N, L, D),
    byt5_mask (N, L) bool, clip (N, C)), the prompts padded to one length L."""
    return self.family.encode(_prompt_list(prompts))

  def uncond(self, count: int, negative_prompt: str | None = None) -> Conditioning | None:
    """Guidance's other half for `count` rows: v1 None (the sampler's zeros); v3 the
    conditioning of `negative_prompt`, by default of "" (the original sampler's)."""
    return self.family.uncond(count, negative_prompt)

  def encode_image(self, image) -> np.ndarray:
    """One image -> its codes (1, h, w); its sides must be multiples of the VQGAN factor."""
    image = as_image(image)
    factor = self.codec.module.factor
    h, w = image.shape[:2]
    if h % factor or w % factor:
      raise ValueError(f"image size {h}x{w} is not a multiple of the VQGAN factor {factor}; "
                       f"crop or resize it, e.g. to {h - h % factor}x{w - w % factor}")
    return self.codec.encode(image[None])

  def sample(self, cond: Conditioning, rng, settings: SamplerSettings, *, latent_shape=None,
             init_tokens=None, mask=None, uncond: Conditioning | None = None) -> np.ndarray:
    """One call of the jit sampler: conditioning rows (see `Conditioning`) -> codes (B, h, w).

    `rng` is an integer seed (row i draws from `row_keys(seed, B)[i]`), a PRNG key or (B,) keys
    (see `paella_jax.sampling.sample`); `uncond`: v3's guidance rows (see `uncond`). The batch
    is split over the local devices when their number divides it.
    """
    cond = _as_rows(cond)
    uncond = None if uncond is None else _as_rows(uncond)
    rows = num_rows(cond)
    key = row_keys(rng, rows) if isinstance(rng, (int, np.integer)) else rng
    devices = jax.local_device_count()
    if devices > 1 and rows % devices == 0:
      from jax.sharding import NamedSharding, PartitionSpec
      from paella_jax.sharding import local_data_mesh
      split = NamedSharding(local_data_mesh(), PartitionSpec("data"))
      cond, uncond = jax.device_put((cond, uncond), split)
    codes = sample(self.model, self.params, cond, key, latent_shape=latent_shape or self.latent_shape,
                   init_tokens=init_tokens, mask=mask, uncond=uncond, **settings.sample_kwargs())
    return np.asarray(codes)

  def decode(self, codes: np.ndarray) -> np.ndarray | None:
    """Codes (N, h, w) -> images (N, H, W, 3) in [0, 1]; None without a VQGAN."""
    return self.codec.decode(codes) if self.has_codec else None

  def _finish(self, cond, labels, seed, settings, uncond=None, **inputs) -> Result:
    codes = self.sample(cond, seed, settings, uncond=uncond, **inputs)
    return Result(codes=codes, images=self.decode(codes), labels=labels, settings=settings)

  def _prompted(self, prompts, num_images: int) -> tuple[Conditioning, list[str]]:
    """(N prompts x num_images conditioning rows, their labels), each prompt's rows together."""
    prompts, n = _prompt_list(prompts), _count(num_images)
    return repeat_rows(self.encode_text(prompts), n), [p for p in prompts for _ in range(n)]

  def prepare(self, mode: str, /, *args, **kwargs) -> Prepared:
    """What `getattr(self, mode)(*args, **kwargs)` would sample, without sampling: for callers
    that sample the rows of several calls together (each row keeps its own key and settings)."""
    view = copy.copy(self)
    view._finish = lambda cond, labels, seed, settings, uncond=None, **inputs: Prepared(
        _as_rows(cond), labels, seed, settings, inputs,
        None if uncond is None else _as_rows(uncond))
    return getattr(view, mode)(*args, **kwargs)

  # --------------------------------------------------------------------------- modes

  def generate(self, prompts: str | Sequence[str] | None = None, *, embeddings=None,
               num_images: int = 1, seed: int = 0, latent_shape: Sequence[int] | None = None,
               negative_prompt: str | None = None, **settings) -> Result:
    """Text -> images: `num_images` per prompt, or per row of `embeddings` (conditioning rows:
    v1 (N, C) or spatial (N, h', w', C); v3 a dict as `encode_text` returns), or unconditional
    samples (v1 zeros, v3 the empty prompt) when neither is given."""
    n = _count(num_images)
    if prompts is not None and embeddings is not None:
      raise ValueError("give prompts or embeddings, not both")
    if embeddings is not None:
      embeddings = _as_rows(embeddings)
      cond = repeat_rows(embeddings, n)
      labels = [f"embedding {i}" for i in range(num_rows(embeddings)) for _ in range(n)]
    elif prompts is not None:
      cond, labels = self._prompted(prompts, n)
    else:
      cond, labels = self.family.unconditional(n), ["(unconditional)"] * n
    rows = num_rows(cond)
    return self._finish(cond, labels, seed, self.settings("generate", **settings),
                        uncond=self.uncond(rows, negative_prompt),
                        latent_shape=tuple(latent_shape or self.latent_shape))

  def inpaint(self, image, prompts: str | Sequence[str], *, mask=None, box=None,
              num_images: int = 1, seed: int = 0, negative_prompt: str | None = None,
              **settings) -> Result:
    """Repaints part of `image`: `mask` (H, W) in [0, 1] (> 0.5 = repaint) or a pixel `box`
    (top, left, bottom, right). Tokens outside the mask keep the image's codes."""
    image = as_image(image)
    h, w = image.shape[:2]
    if (mask is None) == (box is None):
      raise ValueError("inpainting needs a mask or a box (exactly one)")
    if mask is not None:
      mask = np.asarray(as_image(mask).mean(-1) if np.ndim(mask) == 3 or hasattr(mask, "mode")
                        else mask, np.float32)
      if mask.shape != (h, w):
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} and image {w}x{h} differ in size")
    else:
      mask = editing.box_mask(h, w, box)
    codes = self.encode_image(image)
    cond, labels = self._prompted(prompts, num_images)
    rows = num_rows(cond)
    latent = editing.latent_mask(mask, self.codec.module.factor)
    return self._finish(cond, labels, seed, self.settings("inpaint", **settings),
                        uncond=self.uncond(rows, negative_prompt),
                        init_tokens=np.repeat(codes, rows, 0),
                        mask=np.repeat(latent[None], rows, 0))

  def outpaint(self, image, canvas: Sequence[int], prompts: str | Sequence[str], *,
               offset: Sequence[int] | None = None, num_images: int = 1, seed: int = 0,
               negative_prompt: str | None = None, **settings) -> Result:
    """Extends `image` onto a (height, width) pixel canvas, placed at `offset` (top, left;
    default centred); both multiples of the VQGAN factor."""
    image = as_image(image)
    f = self.codec.module.factor
    canvas = tuple(int(c) for c in canvas)
    h, w = image.shape[:2]
    if canvas[0] % f or canvas[1] % f:
      raise ValueError(f"canvas {canvas[0]}x{canvas[1]} is not a multiple of the VQGAN factor {f}")
    if canvas[0] < h or canvas[1] < w:
      raise ValueError(f"canvas {canvas[0]}x{canvas[1]} is smaller than the image {h}x{w}")
    offset = tuple(offset) if offset is not None else ((canvas[0] - h) // 2, (canvas[1] - w) // 2)
    if offset[0] % f or offset[1] % f:
      raise ValueError(f"offset {offset} is not a multiple of the VQGAN factor {f}")
    codes = self.encode_image(image)
    cond, labels = self._prompted(prompts, num_images)
    rows = num_rows(cond)
    tokens, mask = editing.outpaint_canvas(np.repeat(codes, rows, 0),
                                           (canvas[0] // f, canvas[1] // f),
                                           (offset[0] // f, offset[1] // f))
    return self._finish(cond, labels, seed, self.settings("outpaint", **settings),
                        uncond=self.uncond(rows, negative_prompt), init_tokens=tokens, mask=mask)

  def edit(self, image, prompts: str | Sequence[str], *, num_images: int = 1, seed: int = 0,
           negative_prompt: str | None = None, **settings) -> Result:
    """Structural editing: the image's codes noised to `start_step`, denoised towards the prompt."""
    settings = self.settings("edit", **settings)
    codes = self.encode_image(image)
    cond, labels = self._prompted(prompts, num_images)
    rows = num_rows(cond)
    noised = self.family.noise_for_edit(jax.random.key(seed + 1), np.repeat(codes, rows, 0),
                                        settings.start_step, settings.steps)
    return self._finish(cond, labels, seed, settings, uncond=self.uncond(rows, negative_prompt),
                        init_tokens=noised)

  def vary(self, image, *, num_images: int = 1, seed: int = 0,
           negative_prompt: str | None = None, **settings) -> Result:
    """Variations: the image's CLIP image embedding as conditioning (a model trained on image
    embeddings and a CLIP with its vision tower). v3 takes it as `clip_image` next to the empty
    prompt's conditioning, preprocessed as the original (`preprocess_v3`)."""
    image = as_image(image)
    encoder = self.text_encoder(vision=True)
    if encoder.model.config.vision is None:
      raise ValueError("variations need a CLIP with its vision tower (converted without --text-only)")
    pixels = self.family.preprocess(image[None], encoder.model.config.vision.image_size)
    emb = encoder.encode_images(pixels)
    if emb.shape[-1] != self.family.clip_width:
      raise ValueError(f"the CLIP image embedding has {emb.shape[-1]} dims, the model takes "
                       f"{self.family.clip_width}")
    n = _count(num_images)
    return self._finish(repeat_rows(self.family.image_conditioning(emb), n), ["(image)"] * n,
                        seed, self.settings("vary", **settings),
                        uncond=self.uncond(n, negative_prompt), latent_shape=self.latent_shape)

  def interpolate(self, prompts: Sequence[str], *, frames: int = 8, mode: str = "lerp",
                  num_images: int = 1, seed: int = 0, negative_prompt: str | None = None,
                  **settings) -> Result:
    """Frames along the lerp/slerp path through the prompts' conditionings (v3: their ByT5
    states and CLIP embeddings); every frame starts from the same noise, so frames differ only
    by their conditioning."""
    prompts, n = _prompt_list(prompts, least=2), _count(num_images)
    if frames < 2:
      raise ValueError(f"interpolation needs at least 2 frames, got {frames}")
    path = self.family.interpolation(prompts, frames, mode)
    noise = jax.random.randint(jax.random.key(seed + 1), (1, *self.latent_shape), 0,
                               self.model.num_labels)
    return self._finish(repeat_rows(path, n), [f"frame {i}" for i in range(frames) for _ in range(n)],
                        seed, self.settings("interpolate", **settings),
                        uncond=self.uncond(frames * n, negative_prompt),
                        init_tokens=np.repeat(np.asarray(noise), frames * n, 0))

  def multi(self, prompts: Sequence[str], *, labels=None, layout: str = "columns",
            blend: float = 1.0, latent_shape: Sequence[int] | None = None, num_images: int = 1,
            seed: int = 0, negative_prompt: str | None = None, **settings) -> Result:
    """Several prompts over regions (Paella v1): a spatial conditioning map from `labels` (an
    (H, W) int map of prompt indices, any size) or a `layout` of equal columns or rows."""
    if not self.family.spatial:
      raise ValueError("multi needs spatial conditioning (one CLIP embedding per latent position), "
                       "which only Paella v1 takes; Paella v3 attends to a conditioning sequence "
                       "without positions")
    prompts, n = _prompt_list(prompts), _count(num_images)
    emb = self.encode_text(prompts)
    size = tuple(latent_shape or self.latent_shape)
    if labels is not None:
      region = editing.resize_labels(np.asarray(labels), size)
    else:
      region = editing.region_labels(size, len(emb), layout)
    cmap = editing.conditioning_map(emb, region, blend)
    return self._finish(np.repeat(cmap[None], n, 0), [" | ".join(prompts)] * n, seed,
                        self.settings("multi", **settings), uncond=self.uncond(n, negative_prompt),
                        latent_shape=size)
