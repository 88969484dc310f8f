"""The token predictor's training step: noising, CFG conditioning dropout, smoothed CE, AdamW.

Pure functions: `init_state` builds a `TrainState` (`init_params` + `state_from_params`, which
`partition.Trainer.init` runs apart so that no program compiles the whole model's initialisers),
`make_train_step` returns
`train_step(state, batch) -> (state, metrics)` for the caller to jit (with shardings and
donation, see `partition.py`). The model's family picks the loss:
  v1 (`DenoiseUNet`): batch {"tokens": int (B, h, w), "clip": float (B, c_clip)}; r ~ U(0, 1),
    cosine noise, mean smoothed CE.
  v3 (`PaellaV3`): batch {"tokens", "byt5" (B, L, byt5_embd), "byt5_mask" (B, L) bool,
    "byt5_empty" (B, L0, byt5_embd) (the empty caption's states, L0 <= L), optionally "clip" with
    "clip_empty" (B, clip_embd) and "clip_image" (B, clip_embd)}; or, instead of "byt5" and
    "byt5_empty", "byt5_ids" (B, L) int: ByT5 byte ids that the frozen `text_encoder` given to
    `make_train_step` encodes inside the step (no gradient into it); linear noise at
    r = clamp(1 - U + 0.001, 0.001, 1), smoothed CE weighted per token and normalised per image,
    conditioning dropout drawn once per batch (see `v3_loss_and_metrics`).
Mixed precision comes from the model (dtype "bfloat16" computes in bf16 with float32 master
weights; the logits, loss and optimizer stay float32).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from paella_jax.byt5_tokenizer import EOS_ID
from paella_jax import families
from paella_jax.noise import add_noise, replace_tokens, sample_v3_noise_level


@flax.struct.dataclass
class TrainState:
  """step () int32; params and opt_state pytrees; rng a PRNG key; ema_params a copy of the
  params' structure (an exponential moving average) or None when EMA is off."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None


def learning_rate_schedule(cfg: Mapping[str, Any]) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then constant ("warmup_constant", the paper's) or
  cosine decay to zero at `total_steps` ("warmup_cosine")."""
  lr, warmup = cfg["learning_rate"], max(int(cfg["warmup_steps"]), 1)
  if cfg["schedule"] == "warmup_constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                [warmup])
  if cfg["schedule"] == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(int(cfg["total_steps"]), warmup + 1))
  raise ValueError(f"unknown schedule {cfg['schedule']!r} (warmup_constant, warmup_cosine)")


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
  """Gradient clipping by global norm, then AdamW (weight decay on every parameter, as PyTorch)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg["grad_clip"]),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg["adam_b1"], b2=cfg["adam_b2"],
                  eps=cfg["adam_eps"], weight_decay=cfg["weight_decay"]))


def init_params(model: nn.Module, rng: jax.Array, latent_shape: tuple[int, int],
                unbox: bool = True):
  """Fresh parameters of the model's family (see `init_state` for `unbox`)."""
  return families.of_model(model).module.init_params(model, rng, latent_shape, unbox)


def state_from_params(params, optimizer: optax.GradientTransformation, rng: jax.Array,
                      ema: bool = False) -> TrainState:
  """A TrainState at step 0 around `params`: fresh optimizer state, an EMA copy if `ema`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=rng,
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
               latent_shape: tuple[int, int], ema: bool = False, unbox: bool = True
               ) -> TrainState:
  """A fresh TrainState: parameters from the first half of `rng` split in two, the state's
  key the second. With unbox=False the parameter-shaped leaves (params, optimizer moments, EMA)
  stay boxed with their logical axis names, for `nn.get_partition_spec`."""
  init_rng, rng = jax.random.split(rng)
  return state_from_params(init_params(model, init_rng, latent_shape, unbox), optimizer, rng, ema)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """PyTorch's cross_entropy(label_smoothing=eps) per position, without a one-hot tensor.

  logits (..., V) float32, labels (...) int -> (...) float32. Target: (1 - eps) one-hot + eps / V.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return log_z - (1.0 - smoothing) * target_logit - smoothing * jnp.mean(logits, axis=-1)


def drop_conditioning(rng: jax.Array, clip: jax.Array, prob: float, mode: str) -> jax.Array:
  """Zeroes the conditioning (the null condition of guidance) with probability `prob`:
  per sample ("sample") or for the whole batch at once ("batch", as the original)."""
  if mode == "sample":
    keep = jax.random.uniform(rng, (clip.shape[0],)) >= prob
  elif mode == "batch":
    keep = jnp.broadcast_to(jax.random.uniform(rng, ()) >= prob, (clip.shape[0],))
  else:
    raise ValueError(f"cond_drop_mode must be 'sample' or 'batch', got {mode!r}")
  return clip * keep.reshape((-1,) + (1,) * (clip.ndim - 1)).astype(clip.dtype)


def loss_and_metrics(params, model: nn.Module, batch: Mapping[str, jax.Array], rng: jax.Array,
                     cfg: Mapping[str, Any], encode=None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss and metrics of the model's family (see the module docstring); `encode` (v3):
  (ids (B, L), mask (B, L)) -> ByT5 states (B, L, byt5_embd), for batches of "byt5_ids"."""
  return _LOSSES[families.of_model(model).kind](params, model, batch, rng, cfg, encode)


def v1_loss_and_metrics(params, model: nn.Module, batch: Mapping[str, jax.Array], rng: jax.Array,
                        cfg: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Noises the tokens at r ~ U(0, 1) and scores the model's prediction of the clean tokens."""
  tokens, clip = batch["tokens"], batch["clip"]
  r_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
  r = jax.random.uniform(r_rng, (tokens.shape[0],))
  noised, _ = add_noise(noise_rng, tokens, r, model.num_labels)
  clip = drop_conditioning(drop_rng, clip, cfg["cond_drop_prob"], cfg["cond_drop_mode"])
  logits = model.apply({"params": params}, noised, clip, r,
                       rngs={"dropout": jax.random.fold_in(drop_rng, 1)})  # LoRA dropout
  loss = jnp.mean(smoothed_cross_entropy(logits, tokens, cfg["label_smoothing"]))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == tokens)
  return loss, {"loss": loss, "accuracy": accuracy}


def v3_loss_weight(replaced: jax.Array, r: jax.Array, min_weight: float) -> jax.Array:
  """v3's per-token loss weight 1 - (1 - replaced) (1 - r) (1 - min_weight): replaced tokens
  weigh 1, kept ones less the cleaner the image. replaced (B, h, w), r (B,) -> (B, h, w)."""
  kept = 1.0 - replaced.astype(jnp.float32)
  return 1.0 - kept * ((1.0 - r) * (1.0 - min_weight))[:, None, None]


def v3_drop_conditioning(rng: jax.Array, batch: Mapping[str, jax.Array],
                         cfg: Mapping[str, Any], encode=None
                         ) -> tuple[dict[str, jax.Array], jax.Array]:
  """v3's conditioning dropout, drawn once for the whole batch as the original: the captions
  become the empty caption with cfg["byt5_drop_prob"] (byte ids: "" is </s> alone, then
  `encode`d with the mask, no gradient; states: "byt5_empty"); CLIP text is kept with
  cfg["clip_keep_prob"] (else the empty caption's embedding). Returns (model inputs byt5,
  byt5_mask and clip, keep the CLIP image: a () bool kept with cfg["clip_image_keep_prob"])."""
  byt5_rng, clip_rng, image_rng = jax.random.split(rng, 3)
  drop = jax.random.uniform(byt5_rng, ()) < cfg["byt5_drop_prob"]
  mask = batch["byt5_mask"].astype(bool)
  length = mask.shape[1]
  if "byt5_ids" in batch:
    if encode is None:
      raise ValueError("a batch of ByT5 byte ids needs the text encoder (make_train_step's "
                       "text_encoder)")
    ids = batch["byt5_ids"]
    empty_ids = jnp.zeros_like(ids).at[:, 0].set(EOS_ID)
    mask = jnp.where(drop, jnp.arange(length)[None] < 1, mask)
    byt5 = jax.lax.stop_gradient(encode(jnp.where(drop, empty_ids, ids), mask))
    inputs = dict(byt5=byt5, byt5_mask=mask)
  else:
    byt5, empty = batch["byt5"].astype(jnp.float32), batch["byt5_empty"]
    empty_length = empty.shape[1]
    if empty_length > length:
      raise ValueError(f"byt5_empty has {empty_length} tokens, more than the captions' {length}")
    inputs = dict(
        byt5=jnp.where(drop, jnp.pad(empty, ((0, 0), (0, length - empty_length), (0, 0))), byt5),
        byt5_mask=jnp.where(drop, jnp.arange(length)[None] < empty_length, mask))
  if "clip" in batch:
    keep = jax.random.uniform(clip_rng, ()) < cfg["clip_keep_prob"]
    inputs["clip"] = jnp.where(keep, batch["clip"], batch["clip_empty"])
  return inputs, jax.random.uniform(image_rng, ()) < cfg["clip_image_keep_prob"]


def v3_loss_and_metrics(params, model: nn.Module, batch: Mapping[str, jax.Array], rng: jax.Array,
                        cfg: Mapping[str, Any], encode=None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Replaces tokens with probability r, predicts the clean ones: label-smoothed CE weighted by
  `v3_loss_weight`, normalised per image (sum(w * ce) / sum(w)), averaged over the batch. The
  CLIP image embedding, when the batch has one, is kept or left out for the whole batch."""
  tokens = batch["tokens"]
  r_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
  r = sample_v3_noise_level(r_rng, tokens.shape[0])
  noised, replaced = replace_tokens(noise_rng, tokens, r, model.num_labels)
  weight = v3_loss_weight(replaced, r, cfg["loss_weight_min"])
  inputs, keep_image = v3_drop_conditioning(drop_rng, batch, cfg, encode)

  def scored(clip_image):
    logits = model.apply({"params": params}, noised, r, clip_image=clip_image, **inputs,
                         rngs={"dropout": jax.random.fold_in(drop_rng, 1)})  # LoRA dropout
    ce = smoothed_cross_entropy(logits, tokens, cfg["label_smoothing"])
    loss = jnp.mean(jnp.sum(ce * weight, axis=(1, 2)) / jnp.sum(weight, axis=(1, 2)))
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == tokens)

  if "clip_image" in batch:
    loss, accuracy = jax.lax.cond(keep_image, lambda: scored(batch["clip_image"]),
                                  lambda: scored(None))
  else:
    loss, accuracy = scored(None)
  return loss, {"loss": loss, "accuracy": accuracy}


# The loss of each model family (paella_jax/families.py): (params, model, batch, rng, cfg, encode).
_LOSSES = {
    "paella_v1": lambda params, model, batch, rng, cfg, encode: v1_loss_and_metrics(
        params, model, batch, rng, cfg),
    "paella_v3": v3_loss_and_metrics,
}


def with_base(base, adapters):
  """One params tree: the frozen `base` with the trained `adapters` (LoRA factors) beside its
  kernels."""
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(base),
                                            **flax.traverse_util.flatten_dict(adapters)})


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    cfg: Mapping[str, Any], text_encoder: nn.Module | None = None,
                    frozen_base: bool = False):
  """Returns train_step(state, batch, *frozen) -> (new state, metrics dict of scalars); frozen:
  (base_params,) when `frozen_base`, then (text_params,) with a `text_encoder`.

  frozen_base (LoRA, `paella_jax.lora`): `model` is the model with adapters, state.params
  holds only its adapter factors (so the optimizer state and the EMA cover only them), and the
  frozen base params are an argument of the step (sharded by the caller), never trained.

  text_encoder (v3, batches of "byt5_ids"): the frozen ByT5 encoder (`models.t5.T5Encoder`),
  run on the (caption-dropped) byte ids with their padding mask; its `text_params` are an
  argument of the step (sharded by the caller), never trained.

  cfg["grad_accum_steps"] = k > 1 splits the batch into k micro-batches of B/k (each keeps
  its rows on the devices that hold them) and averages their gradients in a `lax.scan`;
  cfg["ema_decay"] > 0 updates state.ema_params after every step.
  """
  cfg = dict(cfg)
  schedule = learning_rate_schedule(cfg)
  accum = int(cfg.get("grad_accum_steps", 1))
  ema_decay = float(cfg.get("ema_decay", 0.0))

  def gradients(params, batch, rng, encode, base):
    loss = lambda trained, *args: loss_and_metrics(
        trained if base is None else with_base(base, trained), *args)
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if accum == 1:
      (_, metrics), grads = grad_fn(params, model, batch, rng, cfg, encode)
      return grads, metrics

    def split(x):  # (B, ...) -> (k, B/k, ...), micro-batch i = rows i, i + k, ...
      if x.shape[0] % accum:
        raise ValueError(f"batch {x.shape[0]} is not divisible by grad_accum_steps {accum}")
      return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

    def micro(carry, inputs):
      micro_batch, i = inputs
      (_, metrics), grads = grad_fn(params, model, micro_batch, jax.random.fold_in(rng, i), cfg,
                                    encode)
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    zeros = (jax.tree.map(jnp.zeros_like, params),
             {k: jnp.zeros((), jnp.float32) for k in ("loss", "accuracy")})
    total, _ = jax.lax.scan(micro, zeros, (jax.tree.map(split, batch), jnp.arange(accum)))
    return jax.tree.map(lambda x: x / accum, total)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array], *frozen):
    rng = jax.random.fold_in(state.rng, state.step)
    base = frozen[0] if frozen_base else None
    encode = None
    if text_encoder is not None:
      text_params = frozen[-1]
      encode = lambda ids, mask: text_encoder.apply({"params": text_params}, ids,
                                                    attention_mask=mask)
    grads, metrics = gradients(state.params, batch, rng, encode, base)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step
