"""The inference pipeline: a token predictor, its text encoders and VQ codec; it samples requests.

    pipe = Pipeline.from_checkpoint("ckpts/paella_v1")   # CLIP and VQGAN as model.json records
    result = pipe.generate("a red fox in the snow", num_images=4, seed=0)
    result.images        # (4, 256, 256, 3) float32 in [0, 1]; result.codes (4, 32, 32) int32
    pipe.inpaint(image, "a red hat", box=(0, 64, 128, 192))
    pipe.outpaint(image, canvas=(256, 512), prompts="a wide beach")
    pipe.edit(image, "a watercolour painting")                  # structural editing
    pipe.vary(image, num_images=4)                              # CLIP image embedding
    pipe.interpolate(["a cat", "a dog"], frames=8)
    pipe.multi(["a forest", "a city"], layout="columns")       # Paella v1 only
    pipe.run(request.Edit(image="in.png", prompts=("a fox",)))  # the same, as a typed request

Each mode method builds a typed request (`paella_jax.request`) and samples it with `run`;
paella-sample, the server, the evaluation and the demo build requests and call `run` (or
`prepare`, to sample the rows of several requests together). Both model families sample through
the same methods (`kind` from model.json; what differs is their `paella_jax.families` entry):
- Paella v1 ("paella_v1") conditions on CLIP text embeddings (N, c_clip) and guides against
  zero conditioning.
- Paella v3 ("paella_v3") conditions on a dict: the prompt's ByT5 states `byt5` (N, L, D) with
  `byt5_mask` (N, L) and its CLIP text embedding `clip` (N, C), plus `clip_image` (N, C) for
  variations. Guidance's other half (`uncond`) is the conditioning of the empty prompt, as in
  the original sampler, or of `negative_prompt=`. It has no spatial conditioning, so no `multi`.

Every method takes images as (H, W, 3) arrays (uint8, or float in [0, 1]), PIL images or file
paths, and returns a `Result`. Sampler settings come from the checkpoint's model.json for that
mode, with any keyword given to the method on top (`steps`, `cfg`, `typical_mass`,
`typical_min_tokens`, `temperature`, `renoise_mode`, `start_step`; "off" turns cfg or typical
filtering off). The same seed and settings give the same codes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from paella_jax import checkpoint, editing, families, request
from paella_jax import quantize as quantization
from paella_jax.checks import FieldError
from paella_jax.families import Conditioning, as_rows, num_rows, repeat_rows
from paella_jax.lora import apply_adapters
from paella_jax.sampler_settings import SamplerSettings
from paella_jax.sampling import row_keys, sample


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
  """A request up to the sampler (`Pipeline.prepare`): the conditioning `cond` (N rows; see
  `families.Conditioning`), N labels, the seed (row i draws from `row_keys(seed, N)[i]`), the
  settings, the sampler inputs (`latent_shape`, or `init_tokens` (N, h, w) with an optional
  `mask`), and v3's `uncond` (N rows of guidance's other half; None for v1, which guides against
  zeros)."""
  cond: Conditioning
  labels: list[str]
  seed: int
  settings: SamplerSettings
  inputs: dict[str, Any]
  uncond: Conditioning | None = None

  @property
  def rows(self) -> int:
    return num_rows(self.cond)


# --------------------------------------------------------------------------- inputs

def as_image(image) -> np.ndarray:
  """A PIL image, an (H, W, 3) array (uint8, or float in [0, 1]) or an image file path ->
  (H, W, 3) float32 in [0, 1]."""
  from paella_jax.images import load_image, pil_to_rgb
  if isinstance(image, (str, os.PathLike)):
    return load_image(os.fspath(image))
  if hasattr(image, "mode") and hasattr(image, "size"):  # PIL
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


def _as_mask(mask, height: int, width: int) -> np.ndarray:
  """An inpainting mask (a path, an image or an (H, W) array in [0, 1]) -> (H, W) float32."""
  is_image = isinstance(mask, (str, os.PathLike)) or hasattr(mask, "mode") or np.ndim(mask) == 3
  mask = as_image(mask).mean(-1) if is_image else np.asarray(mask, np.float32)
  if mask.shape != (height, width):
    raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} and image {width}x{height} differ in "
                     "size")
  return mask


def _as_labels(labels) -> np.ndarray:
  """Region labels: an (H, W) int array, a .npy path, or an image path (one label per distinct
  colour, in colour order)."""
  if not isinstance(labels, (str, os.PathLike)):
    return np.asarray(labels)
  path = os.fspath(labels)
  if path.endswith(".npy"):
    return np.load(path, allow_pickle=False).astype(np.int64)
  image = np.round(as_image(path) * 255).astype(np.int64)
  _, labels = np.unique(image.reshape(-1, 3), axis=0, return_inverse=True)
  return labels.reshape(image.shape[:2])


def _as_embeddings(embeddings) -> Conditioning:
  """Conditioning rows, or a file of them: a .npy array (v1) or a .npz of named arrays (v3)."""
  if not isinstance(embeddings, (str, os.PathLike)):
    return as_rows(embeddings)
  loaded = np.load(os.fspath(embeddings), allow_pickle=False)
  if isinstance(loaded, np.lib.npyio.NpzFile):
    with loaded:
      return as_rows(dict(loaded))
  return as_rows(loaded)


def _encoder_rows() -> int:
  """Rows per call of the text and image encoders: 8 per local device, whatever the pipeline's
  batch_size. A row's embedding then never depends on the caller (paella-sample, the server,
  paella-eval): in bfloat16 it does depend on the program's batch."""
  return 8 * jax.local_device_count()


def _per_prompt(prompts: Sequence[str], n: int) -> list[str]:
  return [p for p in prompts for _ in range(n)]


class Pipeline:
  """A token predictor, its sampling defaults, its text encoders and its VQ codec.

  The encoders are given as objects (`text_encoder`: a `ClipEncoder`; `byt5_encoder`: a
  `ByT5Encoder`, v3 only; `codec`: a `VQGANCodec`) or as checkpoint directories loaded on first
  use (`clip_dir`, `byt5_dir`, `vqgan_dir`); a pipeline without a VQGAN samples codes only, one
  without text encoders takes embeddings only. `directory`: the model's checkpoint directory
  (recorded in sidecars), when it was loaded from one. `batch_size`: images per VQGAN call (the
  text and image encoders take `_encoder_rows()` rows per call). `quantize`: the precision the
  encoders loaded here are held in (`paella_jax.quantize`; the predictor is given as it is).
  """

  def __init__(self, model, params, *, kind: str = "paella_v1",
               sampling: Mapping[str, Any] | None = None,
               latent_shape: Sequence[int] | None = None, text_encoder=None, codec=None,
               byt5_encoder=None, clip_dir: str | None = None, vqgan_dir: str | None = None,
               byt5_dir: str | None = None, model_id: str | None = None, batch_size: int = 64,
               directory: str | None = None, adapters: Sequence[Mapping[str, Any]] = (),
               quantize: str | None = None):
    self.model, self.params, self.kind = model, params, kind
    self.family = families.get(kind)
    self.conditioning = self.family.conditioning(self)
    # an older record may lack a setting: the family's default fills it
    self.sampling = {**self.family.sampler_defaults, **(sampling or {})}
    self.latent_shape = tuple(latent_shape or self.family.latent_shape)
    self.clip_dir, self.vqgan_dir, self.byt5_dir = clip_dir, vqgan_dir, byt5_dir
    self.model_id, self.batch_size, self.directory = model_id, batch_size, directory
    self.adapters = [dict(a) for a in adapters]  # merged LoRA adapters: path, sha256, scale
    self.quantize = quantization.check(quantize)  # of the encoders loaded here (CLIP, ByT5)
    self._text, self._codec, self._byt5 = text_encoder, codec, byt5_encoder

  @classmethod
  def from_checkpoint(cls, directory: str, clip: str | None = None, vqgan: str | None = None,
                      byt5: str | None = None, batch_size: int = 64,
                      lora: Sequence[tuple[str, float]] = (), quantize: str | None = None
                      ) -> Pipeline:
    """Loads a model directory (train.py's export or a converter's output) with the CLIP,
    VQGAN and (v3) ByT5 its model.json records (relative to it), or the ones given; `lora`:
    (adapter file, scale) pairs merged into its weights in order (`paella_jax.lora`);
    `quantize`: "bfloat16" or "int8" weights for the predictor, CLIP and ByT5
    (`paella_jax.quantize`), None for the checkpoints' own."""
    description = checkpoint.read_model_description(directory)
    if description["kind"] not in families.FAMILIES:
      raise ValueError(f"{directory} holds a {description['kind']!r} model, expected one of "
                       f"{families.KINDS}")
    family = families.get(description["kind"])
    model, params = family.load_checkpoint(directory)
    params, adapters = apply_adapters(params, lora, kind=family.kind,
                                      base_id=checkpoint.checkpoint_id(description))
    meta = description.get("meta", {})
    latent_shape = meta.get("latent_shape") or family.latent_shape
    model, params = quantization.quantize(model, params, quantize,
                                          family.module.example_inputs(model, latent_shape))
    recorded = lambda given, key: (os.path.abspath(given) if given
                                   else checkpoint.recorded_path(directory, meta, key))
    return cls(model, jax.device_put(params), kind=family.kind,
               sampling=meta.get("sampling"), latent_shape=latent_shape,
               clip_dir=recorded(clip, "clip_checkpoint"),
               vqgan_dir=recorded(vqgan, "vqgan_checkpoint"),
               byt5_dir=recorded(byt5, "byt5_checkpoint") if "byt5" in family.text_encoders
               else None,
               model_id=checkpoint.checkpoint_id(description), batch_size=batch_size,
               directory=os.path.abspath(directory), adapters=adapters, quantize=quantize)

  # --------------------------------------------------------------------------- components

  def text_encoder(self, vision: bool = False):
    """The CLIP encoder (with its vision tower when `vision`), loaded on first use."""
    from paella_jax.encoders.clip import ClipEncoder, load_clip
    from paella_jax.models.clip import example_inputs
    has_vision = self._text is not None and self._text.model.config.vision is not None
    if self._text is None or (vision and not has_vision):
      if not self.clip_dir:
        raise ValueError("this needs a CLIP text encoder: the model records none; pass one "
                         "(--clip CKPT_DIR)")
      with quantization.loading(self.quantize):
        model, params, tokenizer = load_clip(self.clip_dir, text_only=not vision)
      model, params = quantization.quantize(model, params, self.quantize,
                                            example_inputs(model.config),
                                            methods=("encode_text", "encode_image"))
      self._text = ClipEncoder(model, params, tokenizer, batch_size=_encoder_rows())
    return self._text

  def byt5_encoder(self):
    """The ByT5 encoder of a v3 model, loaded on first use (`_encoder_rows` prompts per call,
    each attending to its own tokens only: see `ByT5Encoder`)."""
    from paella_jax.encoders.byt5 import ByT5Encoder, load_t5_encoder
    from paella_jax.models.t5 import example_inputs
    if self._byt5 is None:
      if not self.byt5_dir:
        raise ValueError("this needs a ByT5 text encoder: the model records none; pass one "
                         "(--byt5 CKPT_DIR)")
      with quantization.loading(self.quantize):
        model, params, tokenizer = load_t5_encoder(self.byt5_dir)
      if tokenizer is None:
        raise ValueError(f"{self.byt5_dir} is a T5 without the byte tokenizer; Paella v3 "
                         "takes ByT5 states (convert google/byt5-xl)")
      model, params = quantization.quantize(model, params, self.quantize, example_inputs())
      self._byt5 = ByT5Encoder(model, params, tokenizer, batch_size=_encoder_rows())
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
    return self.conditioning.encode(list(request.prompt_tuple(prompts)))

  def uncond(self, count: int, negative_prompt: str | None = None) -> Conditioning | None:
    """Guidance's other half for `count` rows: v1 None (the sampler's zeros); v3 the
    conditioning of `negative_prompt`, by default of "" (the original sampler's)."""
    return self.conditioning.uncond(count, negative_prompt)

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
    cond = as_rows(cond)
    uncond = None if uncond is None else as_rows(uncond)
    rows = num_rows(cond)
    key = row_keys(rng, rows) if isinstance(rng, (int, np.integer)) else rng
    devices = jax.local_device_count()
    if devices > 1 and rows % devices == 0:
      from jax.sharding import NamedSharding, PartitionSpec
      from paella_jax.sharding import local_data_mesh
      split = NamedSharding(local_data_mesh(), PartitionSpec("data"))
      cond, uncond = jax.device_put((cond, uncond), split)
    codes = sample(self.model, self.params, cond, key, settings,
                   latent_shape=latent_shape or self.latent_shape, init_tokens=init_tokens,
                   mask=mask, uncond=uncond)
    return np.asarray(codes)

  def decode(self, codes: np.ndarray) -> np.ndarray | None:
    """Codes (N, h, w) -> images (N, H, W, 3) in [0, 1]; None without a VQGAN."""
    return self.codec.decode(codes) if self.has_codec else None

  # --------------------------------------------------------------------------- requests

  def prepare(self, req: request.Request) -> Prepared:
    """What `run(req)` samples, without sampling: for callers that sample the rows of several
    requests together (each row keeps its own key and settings). Bad input raises ValueError
    naming it, before anything is sampled."""
    settings = self.settings(req.MODE, **req.settings)
    if settings.typical_min_tokens > self.model.num_labels:
      raise FieldError(f"typical_min_tokens must be at most the codebook's "
                       f"{self.model.num_labels} codes, got {settings.typical_min_tokens}",
                       "typical_min_tokens")
    prepared = _PREPARE[req.MODE](self, req, settings)
    prepared.cond = as_rows(prepared.cond)
    prepared.uncond = None if prepared.uncond is None else as_rows(prepared.uncond)
    return prepared

  def finish(self, prepared: Prepared) -> Result:
    """Samples and decodes prepared rows."""
    codes = self.sample(prepared.cond, prepared.seed, prepared.settings, uncond=prepared.uncond,
                        **prepared.inputs)
    return Result(codes=codes, images=self.decode(codes), labels=prepared.labels,
                  settings=prepared.settings)

  def run(self, req: request.Request) -> Result:
    """Samples a request: its images (or codes, without a VQGAN), labels and settings."""
    return self.finish(self.prepare(req))

  # --------------------------------------------------------------------------- modes

  def generate(self, prompts: str | Sequence[str] | None = None, *, embeddings=None,
               num_images: int = 1, seed: int = 0, latent_shape: Sequence[int] | None = None,
               negative_prompt: str | None = None, **settings) -> Result:
    """Text -> images: `num_images` per prompt, or per row of `embeddings` (conditioning rows:
    v1 (N, C) or spatial (N, h', w', C); v3 a dict as `encode_text` returns), or unconditional
    samples (v1 zeros, v3 the empty prompt) when neither is given."""
    return self.run(request.Generate(
        prompts=prompts, embeddings=embeddings, latent_shape=latent_shape, num_images=num_images,
        seed=seed, negative_prompt=negative_prompt, settings=settings))

  def inpaint(self, image, prompts: str | Sequence[str], *, mask=None, box=None,
              num_images: int = 1, seed: int = 0, negative_prompt: str | None = None,
              **settings) -> Result:
    """Repaints part of `image`: `mask` (H, W) in [0, 1] (> 0.5 = repaint) or a pixel `box`
    (top, left, bottom, right). Tokens outside the mask keep the image's codes."""
    return self.run(request.Inpaint(
        image=image, prompts=prompts, mask=mask, box=box, num_images=num_images, seed=seed,
        negative_prompt=negative_prompt, settings=settings))

  def outpaint(self, image, canvas: Sequence[int], prompts: str | Sequence[str], *,
               offset: Sequence[int] | None = None, num_images: int = 1, seed: int = 0,
               negative_prompt: str | None = None, **settings) -> Result:
    """Extends `image` onto a (height, width) pixel canvas, placed at `offset` (top, left;
    default centred); both multiples of the VQGAN factor."""
    return self.run(request.Outpaint(
        image=image, canvas=canvas, prompts=prompts, offset=offset, num_images=num_images,
        seed=seed, negative_prompt=negative_prompt, settings=settings))

  def edit(self, image, prompts: str | Sequence[str], *, num_images: int = 1, seed: int = 0,
           negative_prompt: str | None = None, **settings) -> Result:
    """Structural editing: the image's codes noised to `start_step`, denoised towards the prompt."""
    return self.run(request.Edit(image=image, prompts=prompts, num_images=num_images, seed=seed,
                                 negative_prompt=negative_prompt, settings=settings))

  def vary(self, image, *, num_images: int = 1, seed: int = 0,
           negative_prompt: str | None = None, **settings) -> Result:
    """Variations: the image's CLIP image embedding as conditioning (a model trained on image
    embeddings and a CLIP with its vision tower). v3 takes it as `clip_image` next to the empty
    prompt's conditioning, preprocessed as the original (`preprocess_v3`)."""
    return self.run(request.Vary(image=image, num_images=num_images, seed=seed,
                                 negative_prompt=negative_prompt, settings=settings))

  def interpolate(self, prompts: Sequence[str], *, frames: int = 8, mode: str = "lerp",
                  num_images: int = 1, seed: int = 0, negative_prompt: str | None = None,
                  **settings) -> Result:
    """Frames along the lerp/slerp path through the prompts' conditionings (v3: their ByT5
    states and CLIP embeddings); every frame starts from the same noise, so frames differ only
    by their conditioning."""
    return self.run(request.Interpolate(
        prompts=prompts, frames=frames, mode=mode, num_images=num_images, seed=seed,
        negative_prompt=negative_prompt, settings=settings))

  def multi(self, prompts: Sequence[str], *, labels=None, layout: str = "columns",
            blend: float = 1.0, latent_shape: Sequence[int] | None = None, num_images: int = 1,
            seed: int = 0, negative_prompt: str | None = None, **settings) -> Result:
    """Several prompts over regions (Paella v1): a spatial conditioning map from `labels` (an
    (H, W) int map of prompt indices, any size) or a `layout` of equal columns or rows."""
    return self.run(request.Multi(
        prompts=prompts, labels=labels, layout=layout, blend=blend, latent_shape=latent_shape,
        num_images=num_images, seed=seed, negative_prompt=negative_prompt, settings=settings))


# --------------------------------------------------------------------------- one function per mode
# Each takes the pipeline, the request and its settings and returns the Prepared rows.

def _prompted(pipe: Pipeline, req: request.Request, settings: SamplerSettings,
              **inputs) -> Prepared:
  """N prompts x num_images rows (each prompt's together) with guidance's other half."""
  n = req.num_images
  cond = repeat_rows(pipe.encode_text(req.prompts), n)
  return Prepared(cond, _per_prompt(req.prompts, n), req.seed, settings, inputs,
                  pipe.uncond(num_rows(cond), req.negative_prompt))


def _generate(pipe: Pipeline, req: request.Generate, settings: SamplerSettings) -> Prepared:
  n, shape = req.num_images, tuple(req.latent_shape or pipe.latent_shape)
  if req.prompts is not None:
    return _prompted(pipe, req, settings, latent_shape=shape)
  if req.embeddings is not None:
    embeddings = _as_embeddings(req.embeddings)
    cond = repeat_rows(embeddings, n)
    labels = [f"embedding {i}" for i in range(num_rows(embeddings)) for _ in range(n)]
  else:
    cond, labels = pipe.conditioning.unconditional(n), ["(unconditional)"] * n
  return Prepared(cond, labels, req.seed, settings, dict(latent_shape=shape),
                  pipe.uncond(num_rows(cond), req.negative_prompt))


def _inpaint(pipe: Pipeline, req: request.Inpaint, settings: SamplerSettings) -> Prepared:
  image = as_image(req.image)
  h, w = image.shape[:2]
  mask = _as_mask(req.mask, h, w) if req.mask is not None else editing.box_mask(h, w, req.box)
  codes = pipe.encode_image(image)
  rows = len(req.prompts) * req.num_images
  latent = editing.latent_mask(mask, pipe.codec.module.factor)
  return _prompted(pipe, req, settings, init_tokens=np.repeat(codes, rows, 0),
                   mask=np.repeat(latent[None], rows, 0))


def _outpaint(pipe: Pipeline, req: request.Outpaint, settings: SamplerSettings) -> Prepared:
  image = as_image(req.image)
  f = pipe.codec.module.factor
  canvas, (h, w) = req.canvas, image.shape[:2]
  if canvas[0] % f or canvas[1] % f:
    raise ValueError(f"canvas {canvas[0]}x{canvas[1]} is not a multiple of the VQGAN factor {f}")
  if canvas[0] < h or canvas[1] < w:
    raise ValueError(f"canvas {canvas[0]}x{canvas[1]} is smaller than the image {h}x{w}")
  offset = req.offset if req.offset is not None else ((canvas[0] - h) // 2, (canvas[1] - w) // 2)
  if offset[0] % f or offset[1] % f:
    raise ValueError(f"offset {offset} is not a multiple of the VQGAN factor {f}")
  codes = pipe.encode_image(image)
  rows = len(req.prompts) * req.num_images
  tokens, mask = editing.outpaint_canvas(np.repeat(codes, rows, 0),
                                         (canvas[0] // f, canvas[1] // f),
                                         (offset[0] // f, offset[1] // f))
  return _prompted(pipe, req, settings, init_tokens=tokens, mask=mask)


def _edit(pipe: Pipeline, req: request.Edit, settings: SamplerSettings) -> Prepared:
  codes = pipe.encode_image(req.image)
  rows = len(req.prompts) * req.num_images
  noised = pipe.conditioning.noise_for_edit(jax.random.key(req.seed + 1),
                                            np.repeat(codes, rows, 0), settings.start_step,
                                            settings.steps)
  return _prompted(pipe, req, settings, init_tokens=noised)


def _vary(pipe: Pipeline, req: request.Vary, settings: SamplerSettings) -> Prepared:
  image = as_image(req.image)
  encoder = pipe.text_encoder(vision=True)
  if encoder.model.config.vision is None:
    raise ValueError("variations need a CLIP with its vision tower (converted without --text-only)")
  pixels = pipe.conditioning.preprocess(image[None], encoder.model.config.vision.image_size)
  emb = encoder.encode_images(pixels)
  if emb.shape[-1] != pipe.conditioning.clip_width:
    raise ValueError(f"the CLIP image embedding has {emb.shape[-1]} dims, the model takes "
                     f"{pipe.conditioning.clip_width}")
  n = req.num_images
  return Prepared(repeat_rows(pipe.conditioning.image_conditioning(emb), n), ["(image)"] * n,
                  req.seed, settings, dict(latent_shape=pipe.latent_shape),
                  pipe.uncond(n, req.negative_prompt))


def _interpolate(pipe: Pipeline, req: request.Interpolate, settings: SamplerSettings) -> Prepared:
  n, frames = req.num_images, req.frames
  path = pipe.conditioning.interpolation(list(req.prompts), frames, req.mode)
  noise = jax.random.randint(jax.random.key(req.seed + 1), (1, *pipe.latent_shape), 0,
                             pipe.model.num_labels)
  return Prepared(repeat_rows(path, n), _per_prompt([f"frame {i}" for i in range(frames)], n),
                  req.seed, settings, dict(init_tokens=np.repeat(np.asarray(noise), frames * n, 0)),
                  pipe.uncond(frames * n, req.negative_prompt))


def _multi(pipe: Pipeline, req: request.Multi, settings: SamplerSettings) -> Prepared:
  if not pipe.family.spatial:
    spatial = [f.title for f in families.FAMILIES.values() if f.spatial]
    raise ValueError("multi needs spatial conditioning (one CLIP embedding per latent position), "
                     f"which only {' and '.join(spatial)} takes; {pipe.family.title} attends to a "
                     "conditioning sequence without positions")
  n = req.num_images
  emb = pipe.encode_text(req.prompts)
  size = tuple(req.latent_shape or pipe.latent_shape)
  if req.labels is not None:
    region = editing.resize_labels(_as_labels(req.labels), size)
  else:
    region = editing.region_labels(size, len(emb), req.layout)
  cmap = editing.conditioning_map(emb, region, req.blend)
  return Prepared(np.repeat(cmap[None], n, 0), [" | ".join(req.prompts)] * n, req.seed, settings,
                  dict(latent_shape=size), pipe.uncond(n, req.negative_prompt))


_PREPARE: dict[str, Callable[[Pipeline, Any, SamplerSettings], Prepared]] = {
    "generate": _generate, "inpaint": _inpaint, "outpaint": _outpaint, "edit": _edit,
    "vary": _vary, "interpolate": _interpolate, "multi": _multi}
