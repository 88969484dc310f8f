"""The inference pipeline: a token predictor with its text encoder and VQGAN, one method per mode.

    pipe = Pipeline.from_checkpoint("ckpts/paella_v1")          # CLIP and VQGAN as model.json records
    result = pipe.generate("a red fox in the snow", num_images=4, seed=0)
    result.images        # (4, 256, 256, 3) float32 in [0, 1]; result.codes (4, 32, 32) int32
    pipe.inpaint(image, "a red hat", box=(0, 64, 128, 192))
    pipe.outpaint(image, canvas=(256, 512), prompts="a wide beach")
    pipe.edit(image, "a watercolour painting")                  # structural editing
    pipe.vary(image, num_images=4)                              # CLIP image embedding
    pipe.interpolate(["a cat", "a dog"], frames=8)
    pipe.multi(["a forest", "a city"], layout="columns")

Every method takes images as (H, W, 3) arrays (uint8, or float in [0, 1]) or PIL images, and
returns a `Result`. Sampler settings come from the checkpoint's model.json for that mode, with any
keyword given to the method on top (`steps`, `cfg`, `typical_mass`, `typical_min_tokens`,
`temperature`, `renoise_mode`, `start_step`; "off" turns cfg or typical filtering off). The same
seed and settings give the same codes. sample.py, the evaluation and the demo all sample through
this class.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from paella_jax import checkpoint, editing
from paella_jax.sampler_settings import SamplerSettings, family_defaults
from paella_jax.sampling import sample

MODEL_KINDS = ("paella_v1",)


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
  """One call of a mode, up to the sampler (`Pipeline.prepare`): conditioning clip (N, C) or
  (N, h', w', C), N labels, the seed (row i draws from `row_keys(seed, N)[i]`), the settings, and
  the sampler inputs: `latent_shape`, or `init_tokens` (N, h, w) with an optional `mask`."""
  clip: np.ndarray
  labels: list[str]
  seed: int
  settings: SamplerSettings
  inputs: dict[str, Any]


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


class Pipeline:
  """A token predictor, its sampling defaults, and its text encoder and VQ codec.

  The encoders are given as objects (`text_encoder`: a `ClipEncoder`; `codec`: a `VQGANCodec`)
  or as checkpoint directories loaded on first use (`clip_dir`, `vqgan_dir`); a pipeline without a
  VQGAN samples codes only, one without a text encoder takes embeddings only.
  """

  def __init__(self, model, params, *, kind: str = "paella_v1",
               sampling: Mapping[str, Any] | None = None, latent_shape: Sequence[int] = (32, 32),
               text_encoder=None, codec=None, clip_dir: str | None = None,
               vqgan_dir: str | None = None, model_id: str | None = None, batch_size: int = 64):
    if kind not in MODEL_KINDS:
      raise ValueError(f"a {kind!r} model cannot be sampled; models that can: {MODEL_KINDS}")
    self.model, self.params, self.kind = model, params, kind
    self.sampling = dict(sampling or family_defaults(kind))
    self.latent_shape = tuple(latent_shape)
    self.clip_dir, self.vqgan_dir, self.model_id = clip_dir, vqgan_dir, model_id
    self.batch_size = batch_size
    self._text, self._codec = text_encoder, codec

  @classmethod
  def from_checkpoint(cls, directory: str, clip: str | None = None, vqgan: str | None = None,
                      batch_size: int = 64) -> Pipeline:
    """Loads a model directory (train.py's export or a converter's output) with the CLIP and
    VQGAN its model.json records (relative to it), or the ones given."""
    from paella_jax.models.paella import build_model
    description = checkpoint.read_model_description(directory)
    if description["kind"] not in MODEL_KINDS:
      raise ValueError(f"{directory} holds a {description['kind']!r} model, expected one of "
                       f"{MODEL_KINDS}")
    _, config, params = checkpoint.load_model(directory, expected_kind=description["kind"])
    meta = description.get("meta", {})
    return cls(build_model(config), jax.device_put(params), kind=description["kind"],
               sampling=meta.get("sampling") or family_defaults(description["kind"]),
               latent_shape=meta.get("latent_shape", (32, 32)),
               clip_dir=clip or checkpoint.recorded_path(directory, meta, "clip_checkpoint"),
               vqgan_dir=vqgan or checkpoint.recorded_path(directory, meta, "vqgan_checkpoint"),
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

  def encode_text(self, prompts: str | Sequence[str]) -> np.ndarray:
    """Prompts -> conditioning (N, c_clip) float32."""
    return self.text_encoder().encode_text(_prompt_list(prompts))

  def encode_image(self, image) -> np.ndarray:
    """One image -> its codes (1, h, w); its sides must be multiples of the VQGAN factor."""
    image = as_image(image)
    factor = self.codec.module.factor
    h, w = image.shape[:2]
    if h % factor or w % factor:
      raise ValueError(f"image size {h}x{w} is not a multiple of the VQGAN factor {factor}; "
                       f"crop or resize it, e.g. to {h - h % factor}x{w - w % factor}")
    return self.codec.encode(image[None])

  def sample(self, clip, rng, settings: SamplerSettings, *, latent_shape=None, init_tokens=None,
             mask=None) -> np.ndarray:
    """One call of the jit sampler: conditioning (B, C) or (B, h', w', C) -> codes (B, h, w).

    `rng` is an integer seed (row i draws from `row_keys(seed, B)[i]`), a PRNG key or (B,) keys
    (see `paella_jax.sampling.sample`). The batch is split over the local devices when their
    number divides it.
    """
    clip = np.asarray(clip, np.float32)
    key = row_keys(rng, len(clip)) if isinstance(rng, (int, np.integer)) else rng
    devices = jax.local_device_count()
    if devices > 1 and len(clip) % devices == 0:
      from jax.sharding import NamedSharding, PartitionSpec
      from paella_jax.sharding import local_data_mesh
      clip = jax.device_put(clip, NamedSharding(local_data_mesh(), PartitionSpec("data")))
    codes = sample(self.model, self.params, clip, key, latent_shape=latent_shape or self.latent_shape,
                   init_tokens=init_tokens, mask=mask, **settings.sample_kwargs())
    return np.asarray(codes)

  def decode(self, codes: np.ndarray) -> np.ndarray | None:
    """Codes (N, h, w) -> images (N, H, W, 3) in [0, 1]; None without a VQGAN."""
    return self.codec.decode(codes) if self.has_codec else None

  def _finish(self, clip, labels, seed, settings, **inputs) -> Result:
    codes = self.sample(clip, seed, settings, **inputs)
    return Result(codes=codes, images=self.decode(codes), labels=labels, settings=settings)

  def _prompted(self, prompts, num_images: int) -> tuple[np.ndarray, list[str]]:
    """(N prompts x num_images conditioning rows, their labels), each prompt's rows together."""
    prompts, n = _prompt_list(prompts), _count(num_images)
    return np.repeat(self.encode_text(prompts), n, 0), [p for p in prompts for _ in range(n)]

  def prepare(self, mode: str, *args, **kwargs) -> Prepared:
    """What `getattr(self, mode)(*args, **kwargs)` would sample, without sampling: for callers
    that sample the rows of several calls together (each row keeps its own key and settings)."""
    view = copy.copy(self)
    view._finish = lambda clip, labels, seed, settings, **inputs: Prepared(
        np.asarray(clip, np.float32), labels, seed, settings, inputs)
    return getattr(view, mode)(*args, **kwargs)

  # --------------------------------------------------------------------------- modes

  def generate(self, prompts: str | Sequence[str] | None = None, *, embeddings=None,
               num_images: int = 1, seed: int = 0, latent_shape: Sequence[int] | None = None,
               **settings) -> Result:
    """Text -> images: `num_images` per prompt, or per row of `embeddings` ((N, C) or spatial
    (N, h', w', C) conditioning), or unconditional samples when neither is given."""
    n = _count(num_images)
    if prompts is not None and embeddings is not None:
      raise ValueError("give prompts or embeddings, not both")
    if embeddings is not None:
      embeddings = np.asarray(embeddings, np.float32)
      clip, labels = np.repeat(embeddings, n, 0), [f"embedding {i}" for i in range(len(embeddings))
                                                    for _ in range(n)]
    elif prompts is not None:
      clip, labels = self._prompted(prompts, n)
    else:
      clip, labels = np.zeros((n, self.model.c_clip), np.float32), ["(unconditional)"] * n
    return self._finish(clip, labels, seed, self.settings("generate", **settings),
                        latent_shape=tuple(latent_shape or self.latent_shape))

  def inpaint(self, image, prompts: str | Sequence[str], *, mask=None, box=None,
              num_images: int = 1, seed: int = 0, **settings) -> Result:
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
    clip, labels = self._prompted(prompts, num_images)
    latent = editing.latent_mask(mask, self.codec.module.factor)
    return self._finish(clip, labels, seed, self.settings("inpaint", **settings),
                        init_tokens=np.repeat(codes, len(clip), 0),
                        mask=np.repeat(latent[None], len(clip), 0))

  def outpaint(self, image, canvas: Sequence[int], prompts: str | Sequence[str], *,
               offset: Sequence[int] | None = None, num_images: int = 1, seed: int = 0,
               **settings) -> Result:
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
    clip, labels = self._prompted(prompts, num_images)
    tokens, mask = editing.outpaint_canvas(np.repeat(codes, len(clip), 0),
                                           (canvas[0] // f, canvas[1] // f),
                                           (offset[0] // f, offset[1] // f))
    return self._finish(clip, labels, seed, self.settings("outpaint", **settings),
                        init_tokens=tokens, mask=mask)

  def edit(self, image, prompts: str | Sequence[str], *, num_images: int = 1, seed: int = 0,
           **settings) -> Result:
    """Structural editing: the image's codes noised to `start_step`, denoised towards the prompt."""
    settings = self.settings("edit", **settings)
    codes = self.encode_image(image)
    clip, labels = self._prompted(prompts, num_images)
    noised = editing.noise_for_edit(jax.random.key(seed + 1), np.repeat(codes, len(clip), 0),
                                    settings.start_step, settings.steps, self.model.num_labels)
    return self._finish(clip, labels, seed, settings, init_tokens=np.asarray(noised))

  def vary(self, image, *, num_images: int = 1, seed: int = 0, **settings) -> Result:
    """Variations: the image's CLIP image embedding as conditioning (a model trained on image
    embeddings and a CLIP with its vision tower)."""
    from paella_jax.models.clip import preprocess_images
    image = as_image(image)
    encoder = self.text_encoder(vision=True)
    if encoder.model.config.vision is None:
      raise ValueError("variations need a CLIP with its vision tower (converted without --text-only)")
    pixels = preprocess_images(image[None], encoder.model.config.vision.image_size)
    emb = encoder.encode_images(np.asarray(pixels))
    if emb.shape[-1] != self.model.c_clip:
      raise ValueError(f"the CLIP image embedding has {emb.shape[-1]} dims, the model takes "
                       f"{self.model.c_clip}")
    n = _count(num_images)
    return self._finish(np.repeat(emb, n, 0), ["(image)"] * n, seed,
                        self.settings("vary", **settings), latent_shape=self.latent_shape)

  def interpolate(self, prompts: Sequence[str], *, frames: int = 8, mode: str = "lerp",
                  num_images: int = 1, seed: int = 0, **settings) -> Result:
    """Frames along the lerp/slerp path through the prompts' embeddings; every frame starts
    from the same noise, so frames differ only by their conditioning."""
    prompts, n = _prompt_list(prompts, least=2), _count(num_images)
    if frames < 2:
      raise ValueError(f"interpolation needs at least 2 frames, got {frames}")
    path = editing.interpolation_path(self.encode_text(prompts), frames, mode)
    noise = jax.random.randint(jax.random.key(seed + 1), (1, *self.latent_shape), 0,
                               self.model.num_labels)
    return self._finish(np.repeat(path, n, 0), [f"frame {i}" for i in range(frames) for _ in range(n)],
                        seed, self.settings("interpolate", **settings),
                        init_tokens=np.repeat(np.asarray(noise), frames * n, 0))

  def multi(self, prompts: Sequence[str], *, labels=None, layout: str = "columns",
            blend: float = 1.0, latent_shape: Sequence[int] | None = None, num_images: int = 1,
            seed: int = 0, **settings) -> Result:
    """Several prompts over regions: a spatial conditioning map from `labels` (an (H, W) int map
    of prompt indices, any size) or a `layout` of equal columns or rows."""
    prompts, n = _prompt_list(prompts), _count(num_images)
    emb = self.encode_text(prompts)
    size = tuple(latent_shape or self.latent_shape)
    if labels is not None:
      region = editing.resize_labels(np.asarray(labels), size)
    else:
      region = editing.region_labels(size, len(emb), layout)
    cmap = editing.conditioning_map(emb, region, blend)
    return self._finish(np.repeat(cmap[None], n, 0), [" | ".join(prompts)] * n, seed,
                        self.settings("multi", **settings), latent_shape=size)
